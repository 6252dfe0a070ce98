//! How to reach Postgres: `DATABASE_URL` parsing and TLS, shared by the
//! replication connection and the ordinary query pool.
//!
//! `sslmode` follows libpq: `disable` never uses TLS, `prefer` (the default)
//! uses it when the server offers it, `require` insists on it without
//! checking the certificate (unless a root certificate is configured, then it
//! behaves as `verify-ca`, as libpq does), `verify-ca` checks the chain and
//! `verify-full` checks the chain and the host name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// Errors in the connection settings.
#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error("DATABASE_URL is not a valid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("DATABASE_URL must start with postgres:// or postgresql://, not {0}://")]
    Scheme(String),
    #[error("DATABASE_URL names no host")]
    NoHost,
    #[error("DATABASE_URL names no user")]
    NoUser,
    #[error("invalid value {value:?} for connection parameter {name}")]
    BadValue { name: &'static str, value: String },
    #[error("connection parameter {0:?} is not supported by chat-relay")]
    Unsupported(String),
    #[error("cannot read root certificate {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first; we treat it as prefer, which is
            // at least as safe.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// Everything needed to open a connection, parsed once from `DATABASE_URL`.
#[derive(Clone)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnInfo {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    /// Parses a `postgres://user:pass@host:port/db?sslmode=...` URL.
    pub fn parse(raw: &str) -> Result<ConnInfo, ConnInfoError> {
        let url = url::Url::parse(raw)?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ConnInfoError::Scheme(url.scheme().to_string()));
        }
        let decode = |s: &str| {
            percent_decode(s)
                .map_err(|_| ConnInfoError::BadValue { name: "url", value: "invalid percent-encoding".into() })
        };
        let mut info = ConnInfo {
            host: url.host_str().map(|h| h.trim_matches(['[', ']']).to_string()).unwrap_or_default(),
            port: url.port().unwrap_or(5432),
            user: decode(url.username())?,
            password: url.password().map(decode).transpose()?,
            dbname: decode(url.path().trim_start_matches('/'))?,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            application_name: "chat-relay".into(),
            connect_timeout: Duration::from_secs(10),
        };
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match &*k {
                "sslmode" => {
                    info.sslmode = v.parse().map_err(|_| ConnInfoError::BadValue { name: "sslmode", value: v })?
                }
                "sslrootcert" => info.sslrootcert = Some(PathBuf::from(v)),
                "application_name" => info.application_name = v,
                "connect_timeout" => {
                    let secs: u64 =
                        v.parse().map_err(|_| ConnInfoError::BadValue { name: "connect_timeout", value: v })?;
                    info.connect_timeout = Duration::from_secs(secs.max(1));
                }
                "host" => info.host = v,
                "port" => info.port = v.parse().map_err(|_| ConnInfoError::BadValue { name: "port", value: v })?,
                "user" => info.user = v,
                "password" => info.password = Some(v),
                "dbname" => info.dbname = v,
                other => return Err(ConnInfoError::Unsupported(other.to_string())),
            }
        }
        if info.host.is_empty() {
            return Err(ConnInfoError::NoHost);
        }
        if info.user.is_empty() {
            return Err(ConnInfoError::NoUser);
        }
        if info.dbname.is_empty() {
            info.dbname = info.user.clone();
        }
        // libpq: with a root certificate configured, `require` verifies the chain.
        if info.sslmode == SslMode::Require && info.sslrootcert.is_some() {
            info.sslmode = SslMode::VerifyCa;
        }
        Ok(info)
    }

    /// A `tokio_postgres::Config` for ordinary (non-replication) connections.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        cfg
    }

    /// The rustls client configuration this `sslmode` asks for (None for `disable`).
    pub fn tls_config(&self) -> Result<Option<Arc<ClientConfig>>, ConnInfoError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnInfoError::BadValue { name: "sslmode", value: e.to_string() })?;
        let config = match self.sslmode {
            SslMode::Disable => return Ok(None),
            SslMode::Prefer | SslMode::Require => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
            }
            SslMode::VerifyCa => {
                let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()?), provider)
                    .build()
                    .map_err(|e| ConnInfoError::RootCert {
                        path: self.sslrootcert.clone().unwrap_or_default(),
                        reason: e.to_string(),
                    })?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(inner))).with_no_client_auth()
            }
            SslMode::VerifyFull => builder.with_root_certificates(self.root_store()?).with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }

    /// The name the server certificate is checked against (verify-full).
    pub fn server_name(&self) -> Result<ServerName<'static>, ConnInfoError> {
        ServerName::try_from(self.host.clone())
            .map_err(|_| ConnInfoError::BadValue { name: "host", value: self.host.clone() })
    }

    fn root_store(&self) -> Result<RootCertStore, ConnInfoError> {
        let mut store = RootCertStore::empty();
        let explicit = self.sslrootcert.clone().or_else(|| {
            // libpq's default location.
            let home = std::env::var_os("HOME")?;
            let p = PathBuf::from(home).join(".postgresql/root.crt");
            p.exists().then_some(p)
        });
        match explicit {
            Some(path) if path.as_os_str() != "system" => {
                let certs = CertificateDer::pem_file_iter(&path)
                    .map_err(|e| ConnInfoError::RootCert { path: path.clone(), reason: e.to_string() })?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| ConnInfoError::RootCert { path: path.clone(), reason: e.to_string() })?;
                    store
                        .add(cert)
                        .map_err(|e| ConnInfoError::RootCert { path: path.clone(), reason: e.to_string() })?;
                }
                if store.is_empty() {
                    return Err(ConnInfoError::RootCert { path, reason: "no certificate in file".into() });
                }
            }
            _ => {
                let loaded = rustls_native_certs::load_native_certs();
                for cert in loaded.certs {
                    // Skip the odd unparsable system certificate rather than fail.
                    let _ = store.add(cert);
                }
            }
        }
        Ok(store)
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// `sslmode=require`/`prefer`: encrypt, but accept any certificate (libpq semantics).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
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

/// Opens an ordinary tokio-postgres connection honouring `sslmode`, and spawns
/// its connection task.
pub async fn connect(info: &ConnInfo) -> anyhow::Result<tokio_postgres::Client> {
    let cfg = info.pg_config();
    let client = match info.tls_config()? {
        None => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres connection closed");
                }
            });
            client
        }
        Some(tls) => {
            let (client, conn) = cfg.connect(make_tls(tls)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres connection closed");
                }
            });
            client
        }
    };
    Ok(client)
}

/// The tokio-postgres TLS connector for a rustls configuration.
pub fn make_tls(config: Arc<ClientConfig>) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone())
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let i =
            ConnInfo::parse("postgres://al%40ice:p%2Fss@db.example:6543/chat?sslmode=verify-full&application_name=x")
                .unwrap();
        assert_eq!(i.user, "al@ice");
        assert_eq!(i.password.as_deref(), Some("p/ss"));
        assert_eq!(i.host, "db.example");
        assert_eq!(i.port, 6543);
        assert_eq!(i.dbname, "chat");
        assert_eq!(i.sslmode, SslMode::VerifyFull);
        assert_eq!(i.application_name, "x");
    }

    #[test]
    fn defaults_and_errors() {
        let i = ConnInfo::parse("postgresql://bob@localhost").unwrap();
        assert_eq!(i.port, 5432);
        assert_eq!(i.dbname, "bob");
        assert_eq!(i.sslmode, SslMode::Prefer);
        assert!(matches!(ConnInfo::parse("mysql://a@b/c"), Err(ConnInfoError::Scheme(_))));
        assert!(matches!(ConnInfo::parse("postgres://a@b/c?sslmode=bogus"), Err(ConnInfoError::BadValue { .. })));
        assert!(matches!(ConnInfo::parse("postgres://a@b/c?sslcert=x"), Err(ConnInfoError::Unsupported(_))));
        assert!(matches!(ConnInfo::parse("postgres:///c"), Err(ConnInfoError::NoHost)));
        assert!(ConnInfo::parse("not a url").is_err());
    }

    #[test]
    fn require_with_root_cert_verifies_chain() {
        let i = ConnInfo::parse("postgres://a@b/c?sslmode=require&sslrootcert=/x.pem").unwrap();
        assert_eq!(i.sslmode, SslMode::VerifyCa);
    }

    #[test]
    fn debug_hides_password() {
        let i = ConnInfo::parse("postgres://a:secret@b/c").unwrap();
        assert!(!format!("{i:?}").contains("secret"));
    }
}
