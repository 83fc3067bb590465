//! TLS for connections to PostgreSQL, with rustls: the connector each
//! `sslmode` calls for, with libpq's semantics (tokio-postgres only knows
//! whether to ask for TLS; verification is decided here).
//!
//! - `disable`, `prefer`, `require` without `sslrootcert`: encrypt, accept
//!   any certificate (the handshake signatures are still checked).
//! - `require` with `sslrootcert`, `verify-ca`: the chain must lead to a
//!   root from `sslrootcert`; the host name is not checked.
//! - `verify-full`: the chain and the host name (or IP address) are checked.
//!
//! The `ring` crypto provider is passed explicitly, never taken from a
//! process-wide default, so nothing depends on (or panics for lack of) one.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::url::{ConnUrl, RootCert, SslMode};

/// The rustls connector, also usable for Unix-socket hosts: tokio-postgres
/// asks for a TLS connector with an empty host name for them (PostgreSQL
/// never offers TLS on a socket, so it is never used), which
/// [`MakeRustlsConnect`] alone refuses, failing every socket connection.
#[derive(Clone)]
pub struct TlsConnector(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        let name = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
}

/// The TLS connector for `url`'s `sslmode` and `sslrootcert`.
///
/// Errors: a description naming the `sslrootcert` file when it cannot be
/// read or holds no certificate, or when the system roots cannot be loaded.
pub(crate) fn connector(url: &ConnUrl) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verify_chain = match url.sslmode() {
        SslMode::Disable | SslMode::Prefer => None,
        SslMode::Require => url.sslrootcert().map(|root| (root, false)),
        SslMode::VerifyCa => url.sslrootcert().map(|root| (root, false)),
        SslMode::VerifyFull => url.sslrootcert().map(|root| (root, true)),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify_chain {
        None => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Some((root, check_name)) => {
            let roots = Arc::new(root_store(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
            if check_name {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector(MakeRustlsConnect::new(config)))
}

/// The roots `sslrootcert` names.
fn root_store(root: &RootCert) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read sslrootcert file {shown}: {e}"))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("cannot read sslrootcert file {shown}: {e}"))?;
                store.add(cert).map_err(|e| {
                    format!("sslrootcert file {shown} holds an unusable certificate: {e}")
                })?;
            }
            if store.is_empty() {
                return Err(format!("sslrootcert file {shown} holds no PEM certificate"));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(": {e}"));
                return Err(format!(
                    "sslrootcert=system: no trusted root certificates found on this system{why}"
                ));
            }
        }
    }
    Ok(store)
}

/// Accepts any certificate (libpq's `prefer` and `require` without roots);
/// the handshake's signatures are still verified, so the connection is
/// encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check, except that a certificate valid for
/// another name is accepted (webpki checks the name only after the chain).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
