//! Scraping `snapvol serve --metrics`: an HTTP request over a plain socket, the samples of the
//! Prometheus text it answers, and a check of that text by the official Python client's parser.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// An HTTP answer: the status code, the head and the body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` (a whole HTTP/1.1 request) to 127.0.0.1:`port` and reads the answer to the
/// end (the endpoint closes every connection).
pub fn http(port: u16, request: &str) -> HttpAnswer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The samples of one scrape, by series as printed (`name{label="value",...}`).
#[derive(Debug, Clone)]
pub struct Samples {
    pub text: String,
    pub by_series: BTreeMap<String, f64>,
}

impl Samples {
    /// The value of `series`, which must be there.
    pub fn get(&self, series: &str) -> f64 {
        *self
            .by_series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{}", self.text))
    }

    /// `get` as a whole number.
    pub fn count(&self, series: &str) -> u64 {
        self.get(series) as u64
    }
}

/// `GET /metrics`, which must answer 200 in the Prometheus text format.
pub fn scrape(port: u16) -> Samples {
    let a = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n",
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        a.head
    );
    let mut by_series = BTreeMap::new();
    for line in a
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            by_series.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    Samples {
        text: a.body,
        by_series,
    }
}

/// Parses `text` with `prometheus_client.parser` (Debian's python3-prometheus-client), which
/// must accept it with a TYPE for every family; returns how many samples it read.
pub fn python_parses(text: &str) -> usize {
    let python = Path::new("/usr/bin/python3");
    let has_client = python.is_file()
        && Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        has_client,
        "the Prometheus client for Python is not installed, and this test checks the metrics \
         with its parser: install the Debian package `python3-prometheus-client`"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/parse_metrics.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parse_metrics.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics");
    let out = child.wait_with_output().expect("parse_metrics.py");
    assert!(
        out.status.success(),
        "prometheus_client.parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}
