//! Test harness: starts the real server on an ephemeral loopback port with the real SmolLM2
//! model, and a tiny blocking HTTP/1.1 client (JSON, chunked bodies, SSE) so the tests need no
//! HTTP client crate.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn model_path() -> PathBuf {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "model missing: {} (set ORCHARD_MODELS)",
        p.display()
    );
    p
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `extra` flags after `-m MODEL --port 0`, waits for /health.
    pub fn start(extra: &[&str]) -> TestServer {
        let model = model_path();
        let mut argv: Vec<String> = vec![
            "orchard-server".into(),
            "-m".into(),
            model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = orchard_server::ServerArgs::parse_llama_style(argv).expect("args");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = orchard_server::Server::bind(args).await.expect("bind");
                addr_tx.send(server.local_addrs()[0]).expect("addr");
                server
                    .run_until(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("run");
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server bound");
        let s = TestServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let t0 = Instant::now();
        loop {
            let r = s.get("/health");
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "health while loading: {}", r.text);
            assert!(t0.elapsed() < Duration::from_secs(60), "model did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.post_with(path, &[], body)
    }

    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
        let b = serde_json::to_vec(body).expect("json");
        http(self.addr, "POST", path, headers, Some(&b))
    }

    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        http(self.addr, "POST", path, headers, Some(body))
    }

    /// Opens a streaming request; the caller reads events from it.
    pub fn stream(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> SseStream {
        let b = serde_json::to_vec(body).expect("json");
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        write_request(&mut s, "POST", path, headers, Some(&b));
        let mut r = BufReader::new(s);
        let (status, hdrs) = read_head(&mut r);
        let chunked = hdrs
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        SseStream {
            status,
            reader: r,
            chunked,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.text.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn write_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    if let Some(b) = body {
        // A server that answers early (413) may close before reading everything.
        let _ = s.write_all(b);
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).expect("header") == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    if n == 0 {
        return None;
    }
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    write_request(&mut s, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut bytes = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            bytes.extend(c);
        }
    } else {
        let _ = r.read_to_end(&mut bytes);
    }
    Resp {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub struct SseStream {
    pub status: u16,
    reader: BufReader<TcpStream>,
    chunked: bool,
    buf: Vec<u8>,
    done: bool,
}

impl SseStream {
    /// The next `data:` payload (`[DONE]` included), `None` at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&ev).into_owned();
                for line in text.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        return Some(d.to_string());
                    }
                }
                continue;
            }
            if self.done {
                return None;
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader)
            } else {
                let mut b = vec![0; 4096];
                match self.reader.read(&mut b) {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        b.truncate(n);
                        Some(b)
                    }
                }
            };
            match more {
                Some(b) => self.buf.extend(b),
                None => self.done = true,
            }
        }
    }

    /// Every remaining `data:` payload parsed as JSON, up to `[DONE]`.
    pub fn collect_json(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(d) = self.next_data() {
            if d == "[DONE]" {
                break;
            }
            out.push(serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad event {d:?}: {e}")));
        }
        out
    }
}

/// Concatenated `delta.content` of a chat stream's events for choice 0.
pub fn chat_stream_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str())
        .collect()
}
