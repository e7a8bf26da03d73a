//! A man in the middle between one box and the broker: it forwards MQTT packets whole, and
//! changes, drops or re-orders one message on a topic on the way, as an attacker or a faulty relay
//! would. A dropped message is acknowledged to the box in the broker's place, so the box believes
//! it delivered. Which record it touched is kept for the test to name.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What to do to the `nth` message (from 1) on topics ending in the proxy's suffix.
#[derive(Debug, Clone)]
pub enum Tamper {
    /// Replace the first occurrence of `from` in the payload with `to`.
    Alter { nth: usize, from: String, to: String },
    /// Never forward it; acknowledge it to the box.
    Drop { nth: usize },
    /// Forward it after the message that follows it.
    Swap { nth: usize },
}

pub struct MqttProxy {
    pub port: u16,
    /// The chain record numbers of the messages touched.
    pub touched: Arc<Mutex<Vec<u64>>>,
}

impl MqttProxy {
    pub fn start(broker_port: u16, suffix: &str, tamper: Tamper) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let touched = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let (suffix, shared_touched) = (suffix.to_string(), touched.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", broker_port)) else { continue };
                let rule = Rule {
                    suffix: suffix.clone(),
                    tamper: tamper.clone(),
                    seen: seen.clone(),
                    touched: shared_touched.clone(),
                };
                connection(client, upstream, rule);
            }
        });
        Self { port, touched }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

#[derive(Clone)]
struct Rule {
    suffix: String,
    tamper: Tamper,
    seen: Arc<AtomicUsize>,
    touched: Arc<Mutex<Vec<u64>>>,
}

fn connection(client: TcpStream, upstream: TcpStream, rule: Rule) {
    let to_client = Arc::new(Mutex::new(client.try_clone().expect("clone client socket")));
    let (mut from_upstream, writer) = (upstream.try_clone().expect("clone upstream socket"), to_client.clone());
    std::thread::spawn(move || {
        while let Ok(packet) = read_packet(&mut from_upstream) {
            if writer.lock().map(|mut w| w.write_all(&packet)).is_err() {
                break;
            }
        }
        let _ = writer.lock().map(|w| w.shutdown(std::net::Shutdown::Both));
    });
    std::thread::spawn(move || {
        let (mut from_client, mut to_upstream) = (client, upstream);
        let mut held: Option<Vec<u8>> = None;
        while let Ok(packet) = read_packet(&mut from_client) {
            let mut out = vec![packet];
            if let Some(publish) = Publish::parse(&out[0]).filter(|p| p.topic.ends_with(&rule.suffix)) {
                let n = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
                let seq = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                    .ok()
                    .and_then(|v| v["chain"]["seq"].as_u64().or_else(|| v["seq"].as_u64()));
                match &rule.tamper {
                    Tamper::Alter { nth, from, to } if *nth == n => {
                        let text = String::from_utf8_lossy(&publish.payload).replacen(from.as_str(), to, 1);
                        out = vec![publish.with_payload(text.as_bytes())];
                        rule.touched.lock().expect("touched").extend(seq);
                    }
                    Tamper::Drop { nth } if *nth == n => {
                        if let Some(pkid) = publish.pkid {
                            let ack = [0x40, 0x02, (pkid >> 8) as u8, pkid as u8];
                            let _ = to_client.lock().map(|mut w| w.write_all(&ack));
                        }
                        out.clear();
                        rule.touched.lock().expect("touched").extend(seq);
                    }
                    Tamper::Swap { nth } if *nth == n => {
                        held = out.pop();
                        rule.touched.lock().expect("touched").extend(seq);
                    }
                    Tamper::Swap { nth } if *nth + 1 == n => out.extend(held.take()),
                    _ => {}
                }
            }
            if out.iter().any(|p| to_upstream.write_all(p).is_err()) {
                break;
            }
        }
        let _ = to_upstream.shutdown(std::net::Shutdown::Both);
    });
}

/// One whole MQTT packet: fixed header, remaining length, the rest.
fn read_packet(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut packet = vec![0u8];
    stream.read_exact(&mut packet)?;
    let (mut length, mut factor) = (0usize, 1usize);
    loop {
        let mut byte = [0u8];
        stream.read_exact(&mut byte)?;
        packet.push(byte[0]);
        length += usize::from(byte[0] & 0x7f) * factor;
        factor *= 128;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let start = packet.len();
    packet.resize(start + length, 0);
    stream.read_exact(&mut packet[start..])?;
    Ok(packet)
}

struct Publish {
    first: u8,
    topic: String,
    pkid: Option<u16>,
    payload: Vec<u8>,
}

impl Publish {
    fn parse(packet: &[u8]) -> Option<Self> {
        let first = *packet.first()?;
        if first >> 4 != 3 {
            return None;
        }
        let mut at = 1;
        while packet.get(at)? & 0x80 != 0 {
            at += 1;
        }
        at += 1;
        let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
        let topic = String::from_utf8(packet.get(at + 2..at + 2 + topic_len)?.to_vec()).ok()?;
        at += 2 + topic_len;
        let pkid = if (first >> 1) & 3 > 0 {
            let id = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
            at += 2;
            Some(id)
        } else {
            None
        };
        Some(Self { first, topic, pkid, payload: packet.get(at..)?.to_vec() })
    }

    /// The same packet with another payload.
    fn with_payload(&self, payload: &[u8]) -> Vec<u8> {
        let mut body = (self.topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(self.topic.as_bytes());
        if let Some(pkid) = self.pkid {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut packet = vec![self.first];
        let mut length = body.len();
        loop {
            let mut byte = (length % 128) as u8;
            length /= 128;
            if length > 0 {
                byte |= 0x80;
            }
            packet.push(byte);
            if length == 0 {
                break;
            }
        }
        packet.extend(body);
        packet
    }
}
