//! ClusterIP and NodePort allocation. The allocation tables live in memory and are rebuilt
//! from the stored Services at start-up, so they can never disagree with the store for
//! longer than a failed request (one API server per store; several would need the
//! allocations themselves stored, as kube-apiserver does).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

/// Hands out IPs of a CIDR, never the network or broadcast address.
pub struct IpAllocator {
    net: Ipv4Net,
    used: HashSet<Ipv4Addr>,
}

impl IpAllocator {
    pub fn new(net: Ipv4Net) -> Self {
        IpAllocator {
            net,
            used: HashSet::new(),
        }
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    fn usable(&self) -> (u32, u32) {
        let first = u32::from(self.net.network()) + 1;
        let last = u32::from(self.net.broadcast()).saturating_sub(1);
        (first, last)
    }

    /// A free address, chosen at random (as kube-apiserver does) to spread reuse.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let (first, last) = self.usable();
        if last < first {
            return None;
        }
        let size = last - first + 1;
        let start = rand::rng().random_range(0..size);
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start + i) % size))
            .find(|ip| !self.used.contains(ip))
            .inspect(|ip| {
                self.used.insert(*ip);
            })
    }

    /// Claims a specific address; the error says why it cannot be had.
    pub fn claim(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        let (first, last) = self.usable();
        let n = u32::from(ip);
        if n < first || n > last {
            return Err(format!(
                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                self.net
            ));
        }
        if !self.used.insert(ip) {
            return Err(format!("the provided IP ({ip}) is already allocated"));
        }
        Ok(())
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

/// Hands out NodePorts from a range (30000-32767 by default).
pub struct PortAllocator {
    first: u16,
    last: u16,
    used: HashSet<u16>,
}

impl PortAllocator {
    pub fn new(first: u16, last: u16) -> Self {
        PortAllocator {
            first,
            last,
            used: HashSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<u16> {
        let size = u32::from(self.last - self.first) + 1;
        let start = rand::rng().random_range(0..size);
        (0..size)
            .map(|i| self.first + ((start + i) % size) as u16)
            .find(|p| !self.used.contains(p))
            .inspect(|p| {
                self.used.insert(*p);
            })
    }

    pub fn claim(&mut self, port: u16) -> Result<(), String> {
        if port < self.first || port > self.last {
            return Err(format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                self.first, self.last
            ));
        }
        if !self.used.insert(port) {
            return Err("provided port is already allocated".into());
        }
        Ok(())
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_unique_until_exhausted() {
        let mut a = IpAllocator::new("198.19.0.0/29".parse().expect("cidr"));
        let mut got: Vec<Ipv4Addr> = (0..6).map(|_| a.allocate().expect("free ip")).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 6);
        assert!(a.allocate().is_none());
        a.release(got[0]);
        assert_eq!(a.allocate(), Some(got[0]));
        assert!(a.claim("198.19.0.1".parse().expect("ip")).is_err());
        assert!(a.claim("10.0.0.1".parse().expect("ip")).is_err());
    }

    #[test]
    fn ports_are_unique_until_exhausted() {
        let mut a = PortAllocator::new(30000, 30009);
        let mut got: Vec<u16> = (0..10).map(|_| a.allocate().expect("free port")).collect();
        got.sort();
        assert_eq!(got, (30000..30010).collect::<Vec<_>>());
        assert!(a.allocate().is_none());
        assert!(a.claim(30001).is_err());
        assert!(a.claim(29999).is_err());
        a.release(30001);
        assert!(a.claim(30001).is_ok());
    }
}
