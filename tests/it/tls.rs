//! TLS to the management API: verification is on by default, a custom CA (`tls.ca_file`) is trusted,
//! and `insecure_skip_verify` is the explicit way out. A TLS-terminating proxy with a certificate from
//! a self-signed CA made for the test sits in front of the real management API.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, eventually, find, free_port,
    management_url,
};

struct TlsProxy {
    port: u16,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl TlsProxy {
    async fn start() -> TlsProxy {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rabbitwatch test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the TLS proxy");
        let port = listener.local_addr().expect("address").port();
        let upstream = management_url().trim_start_matches("http://").to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A client that rejects the certificate aborts the handshake: nothing to forward.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsProxy {
            port,
            ca_pem: ca.pem(),
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn daemon(vhost: &TestVhost, proxy: &TlsProxy, tls: &str) -> Daemon {
    let tuning = Tuning::default();
    let cluster =
        cluster_yaml("secure", &proxy.url(), vhost.name(), &tuning) + &format!("    tls: {tls}\n");
    // require: none so that the untrusted case starts and shows what it does about it.
    let config =
        config_with_clusters(free_port(), &tuning, &[cluster]) + "startup: { require: none }\n";
    Daemon::start_with_files(&config, &[("ca.pem", &proxy.ca_pem)]).await
}

async fn up(daemon: &Daemon) -> Result<f64, String> {
    let m = daemon.metrics().await?;
    find(&m, "rabbitwatch_up", &[("cluster", "secure")]).ok_or("no rabbitwatch_up yet".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_ca_is_trusted_for_the_management_api() {
    let vhost = TestVhost::create().await;
    let proxy = TlsProxy::start().await;
    let daemon = daemon(&vhost, &proxy, "{ ca_file: ca.pem }").await;
    eventually(
        Duration::from_secs(15),
        "the cluster scraped over TLS",
        async || match up(&daemon).await? {
            1.0 => Ok(()),
            v => Err(format!("up={v}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_by_default() {
    let vhost = TestVhost::create().await;
    let proxy = TlsProxy::start().await;
    let daemon = daemon(&vhost, &proxy, "{ insecure_skip_verify: false }").await;
    eventually(
        Duration::from_secs(15),
        "the cluster down with a certificate error in /readyz",
        async || {
            let v = up(&daemon).await?;
            let (_, ready) = daemon.get_json("/readyz").await?;
            let detail = ready["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "cluster:secure"))
                .and_then(|c| c["detail"].as_str())
                .unwrap_or_default()
                .to_lowercase();
            (v == 0.0 && detail.contains("certificate"))
                .then_some(())
                .ok_or(format!("up={v} detail={detail}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_is_the_explicit_way_out() {
    let vhost = TestVhost::create().await;
    let proxy = TlsProxy::start().await;
    let daemon = daemon(&vhost, &proxy, "{ insecure_skip_verify: true }").await;
    eventually(
        Duration::from_secs(15),
        "the cluster scraped without verification",
        async || match up(&daemon).await? {
            1.0 => Ok(()),
            v => Err(format!("up={v}")),
        },
    )
    .await;
}
