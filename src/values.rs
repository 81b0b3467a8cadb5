//! Value types that configuration is written in: durations (`30`, `30s`,
//! `500ms`, `2m`), byte sizes (`512Mi`, `1G`, `1048576`), bind addresses
//! (`host:port`, `[::]:port`, `unix:/path`, `fd://N`), file modes, the
//! peers trusted with forwarding headers, and the TLS client-certificate
//! rule. Each parses the same way from a flag, an environment variable and
//! the YAML file, so an error reads the same wherever the value came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in seconds, optionally with a unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Secs(pub Duration);

/// The longest duration any setting takes: a year. Longer ones are typos
/// (`1e20`), and deadlines computed from them would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl FromStr for Secs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3600.0)
        } else {
            (s, 1.0)
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (examples: 30, 30s, 500ms, 2m)"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("`{s}` must be a non-negative duration"));
        }
        let seconds = value * scale;
        if seconds > MAX_DURATION.as_secs_f64() {
            return Err(format!(
                "`{s}` is longer than a year, the most any duration may be"
            ));
        }
        Ok(Secs(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A byte count written as a Kubernetes quantity, so a value pasted from a
/// manifest's `resources.limits.memory` means the same here: a decimal
/// number (`1.5`) with a binary suffix (`Ki` .. `Ei`), a decimal suffix
/// (`k`, `M`, `G`, `T`, `P`, `E`) or an exponent (`1e9`, `129E6`); a plain
/// `B` is allowed too. Fractions of a byte round up, as Kubernetes does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let not_a_size =
            || format!("`{s}` is not a byte size (examples: 536870912, 512Mi, 1.5Gi, 1e9)");
        let too_large = || format!("`{s}` is more than {} bytes", u64::MAX);
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{whole}{fraction}");
        // 38 digits always fit a u128; more are not a memory size anyway.
        if digits.is_empty() || digits.len() > 38 || fraction.contains('.') {
            return Err(not_a_size());
        }
        let mut numerator: u128 = digits.parse().map_err(|_| not_a_size())?;
        let mut denominator: u128 = 10u128.pow(fraction.len() as u32);
        let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        let decimal = ["k", "M", "G", "T", "P", "E"];
        let scale = |n: u128, factor: u128| n.checked_mul(factor).ok_or_else(too_large);
        if let Some(i) = binary.iter().position(|b| *b == suffix) {
            numerator = scale(numerator, 1u128 << (10 * (i + 1)))?;
        } else if let Some(i) = decimal.iter().position(|d| *d == suffix) {
            numerator = scale(numerator, 1000u128.pow(i as u32 + 1))?;
        } else if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
            let exponent: i32 = exponent.parse().map_err(|_| not_a_size())?;
            let power = 10u128
                .checked_pow(exponent.unsigned_abs())
                .ok_or_else(too_large)?;
            if exponent >= 0 {
                numerator = scale(numerator, power)?;
            } else {
                denominator = denominator.checked_mul(power).ok_or_else(not_a_size)?;
            }
        } else if !suffix.is_empty() && suffix != "B" {
            return Err(not_a_size());
        }
        u64::try_from(numerator.div_ceil(denominator))
            .map(ByteSize)
            .map_err(|_| too_large())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a listener comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindAddr {
    Tcp(SocketAddr),
    /// `https://host:port`: TCP served with TLS (proxy mode's front).
    Tls(SocketAddr),
    Unix(PathBuf),
    /// A socket corral itself inherited at this descriptor number.
    Fd(i32),
}

impl FromStr for BindAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("https://") {
            return match rest.parse::<BindAddr>() {
                Ok(BindAddr::Tcp(addr)) => Ok(BindAddr::Tls(addr)),
                _ => Err(format!(
                    "`{s}`: https:// takes a TCP address, as in https://0.0.0.0:8443"
                )),
            };
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, as in unix:/run/app.sock".into());
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Some(fd) = s.strip_prefix("fd://") {
            let fd: i32 = fd
                .parse()
                .map_err(|_| format!("`{s}`: fd:// takes a descriptor number, as in fd://3"))?;
            if fd < 3 {
                return Err(format!("`{s}`: descriptors 0-2 are stdio, not sockets"));
            }
            return Ok(BindAddr::Fd(fd));
        }
        // Gunicorn accepts a bare port and `:port`; both mean every address.
        let normalised = if s.parse::<u16>().is_ok() {
            format!("0.0.0.0:{s}")
        } else if let Some(port) = s.strip_prefix(':') {
            format!("0.0.0.0:{port}")
        } else if let Some(port) = s.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else {
            s.to_string()
        };
        normalised.parse::<SocketAddr>().map(BindAddr::Tcp).map_err(|_| {
            format!("`{s}` is not an address (examples: 0.0.0.0:8000, [::]:8000, unix:/run/app.sock, fd://3)")
        })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Tls(addr) => write!(f, "https://{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            BindAddr::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

/// A Unix file mode written in octal (`660`, `0o660`, `0660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 => Ok(Mode(mode)),
            _ => Err(format!("`{s}` is not an octal file mode (example: 660)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

/// Peers whose `X-Forwarded-*` headers are believed: addresses and CIDR
/// blocks, comma-separated, or `*` for any (Gunicorn's and Uvicorn's
/// `--forwarded-allow-ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowIps {
    pub any: bool,
    /// A bare address is a full-length prefix.
    pub nets: Vec<IpNet>,
}

impl AllowIps {
    pub fn allows(&self, peer: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.any || self.nets.iter().any(|net| net.contains(&peer))
    }
}

impl FromStr for AllowIps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut allow = AllowIps {
            any: false,
            nets: Vec::new(),
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                allow.any = true;
                continue;
            }
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("`{item}` is not an address or CIDR block (examples: 10.0.0.0/8, ::1, *)")
            })?;
            let full = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => full,
                Some(l) => l.parse::<u8>().unwrap_or(u8::MAX),
            };
            let net = IpNet::new(addr, len)
                .map_err(|_| format!("`{item}`: the prefix length must be 0..={full}"))?;
            allow.nets.push(net);
        }
        Ok(allow)
    }
}

impl fmt::Display for AllowIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = self.nets.iter().map(IpNet::to_string).collect();
        if self.any {
            items.insert(0, "*".into());
        }
        write!(f, "{}", items.join(","))
    }
}

/// Whether TLS clients must present a certificate (`--cert-reqs`):
/// Gunicorn's numbers (`ssl.CERT_NONE`, `CERT_OPTIONAL`, `CERT_REQUIRED`)
/// or their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReqs {
    None,
    Optional,
    Required,
}

impl FromStr for CertReqs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" => Ok(CertReqs::None),
            "1" | "optional" => Ok(CertReqs::Optional),
            "2" | "required" => Ok(CertReqs::Required),
            _ => Err(format!(
                "`{s}` is not one of none (0), optional (1), required (2)"
            )),
        }
    }
}

impl fmt::Display for CertReqs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertReqs::None => "none",
            CertReqs::Optional => "optional",
            CertReqs::Required => "required",
        })
    }
}

/// YAML writes these either as numbers (`workers: 4`, `timeout: 30`) or
/// strings (`timeout: 30s`); both go through `FromStr` so the rules match
/// the flags exactly.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

macro_rules! serde_via_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Scalar::deserialize(d)?.text().parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

serde_via_str!(Secs, ByteSize, BindAddr, Mode, AllowIps, CertReqs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_peers_match_addresses_and_blocks() {
        let allow: AllowIps = "127.0.0.1, 10.0.0.0/8,::1,fd00::/8".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allow.allows(ip("127.0.0.1")));
        assert!(
            allow.allows(ip("::ffff:127.0.0.1")),
            "v4-mapped counts as v4"
        );
        assert!(allow.allows(ip("10.200.3.4")));
        assert!(!allow.allows(ip("11.0.0.1")));
        assert!(allow.allows(ip("fd12::1")));
        assert!(!allow.allows(ip("fe80::1")));
        assert!("*".parse::<AllowIps>().unwrap().allows(ip("8.8.8.8")));
        assert!(!"".parse::<AllowIps>().unwrap().allows(ip("127.0.0.1")));
        assert!("10.0.0.0/33".parse::<AllowIps>().is_err());
        assert!("localhost".parse::<AllowIps>().is_err());
        assert!(
            "10.1.0.0/12"
                .parse::<AllowIps>()
                .unwrap()
                .allows(ip("10.15.255.1"))
        );
    }

    #[test]
    fn durations() {
        assert_eq!("30".parse::<Secs>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "1.5".parse::<Secs>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            "500ms".parse::<Secs>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Secs>().unwrap().0, Duration::from_secs(120));
        assert!("-1".parse::<Secs>().is_err());
        assert!("soon".parse::<Secs>().is_err());
        assert_eq!(Secs(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Secs(Duration::from_secs(3)).to_string(), "3s");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("512Mi".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert!("-5Mi".parse::<ByteSize>().is_err());
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn byte_sizes_as_kubernetes_writes_them() {
        let bytes = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("512M"), Ok(512_000_000));
        assert_eq!(bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(bytes("129E6"), Ok(129_000_000));
        assert_eq!(bytes("128974848"), Ok(128_974_848));
        assert_eq!(bytes("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(bytes("0.5"), Ok(1), "a fraction of a byte rounds up");
        assert_eq!(bytes("15e-1"), Ok(2));
        assert_eq!(bytes("512B"), Ok(512));
        assert_eq!(bytes(".5Ki"), Ok(512));
        for bad in [
            "", "Gi", "1.2.3", "1Gb", "1 e9", "1e", "1e99", "16Ei", "1e-99", "1.5x",
        ] {
            assert!(bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_longer_than_a_year_are_refused() {
        for bad in ["1e20", "1e300", "inf", "NaN", "9000h", "1e11ms", "-0.5"] {
            assert!(bad.parse::<Secs>().is_err(), "{bad:?} accepted");
        }
        assert_eq!("365d".parse::<Secs>().ok(), None, "no day unit");
        assert_eq!("8760h".parse::<Secs>().unwrap().0, MAX_DURATION);
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            "0.0.0.0:8000".parse::<BindAddr>().unwrap(),
            BindAddr::Tcp("0.0.0.0:8000".parse().unwrap())
        );
        assert_eq!(
            "[::]:80".parse::<BindAddr>().unwrap(),
            BindAddr::Tcp("[::]:80".parse().unwrap())
        );
        assert_eq!(
            "8000".parse::<BindAddr>().unwrap(),
            BindAddr::Tcp("0.0.0.0:8000".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse::<BindAddr>().unwrap(),
            BindAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!("fd://3".parse::<BindAddr>().unwrap(), BindAddr::Fd(3));
        assert!("fd://1".parse::<BindAddr>().is_err());
        assert!("unix:".parse::<BindAddr>().is_err());
        assert!("example.com:80".parse::<BindAddr>().is_err());
        assert!("1.2.3.4:99999".parse::<BindAddr>().is_err());
        assert_eq!(
            "https://:8443".parse::<BindAddr>().unwrap(),
            BindAddr::Tls("0.0.0.0:8443".parse().unwrap())
        );
        assert_eq!(
            BindAddr::Tls("127.0.0.1:8443".parse().unwrap()).to_string(),
            "https://127.0.0.1:8443"
        );
        assert!("https://unix:/x".parse::<BindAddr>().is_err());
    }

    #[test]
    fn modes() {
        assert_eq!("660".parse::<Mode>().unwrap().0, 0o660);
        assert_eq!("0o600".parse::<Mode>().unwrap().0, 0o600);
        assert!("999".parse::<Mode>().is_err());
    }

    mod arbitrary_input {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(s in any::<String>()) {
                let _ = s.parse::<Secs>();
                let _ = s.parse::<ByteSize>();
                let _ = s.parse::<BindAddr>();
                let _ = s.parse::<Mode>();
                let _ = s.parse::<AllowIps>();
                let _ = s.parse::<CertReqs>();
            }

            #[test]
            fn address_lists_never_panic(s in "[0-9a-f:.*/, ]{0,40}") {
                if let Ok(allow) = s.parse::<AllowIps>() {
                    let _ = allow.allows(IpAddr::from([127, 0, 0, 1]));
                    prop_assert_eq!(allow.to_string().parse::<AllowIps>(), Ok(allow));
                }
            }

            #[test]
            fn number_like_text_never_panics(s in "[-+0-9.eE]{0,12}(ms|s|m|h|Ki|Mi|Gi|Ei|k|M|G|E|B)?") {
                let _ = s.parse::<Secs>();
                let _ = s.parse::<ByteSize>();
            }

            #[test]
            fn whole_byte_counts_read_back(n in any::<u64>()) {
                prop_assert_eq!(n.to_string().parse::<ByteSize>(), Ok(ByteSize(n)));
            }
        }
    }
}
