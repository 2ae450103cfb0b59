//! The two link settings the data plane changes with the ethtool ioctl (rtnetlink does not
//! carry them): TX checksum offload and GRO.

/// ETHTOOL_STXCSUM: TX checksum offload on/off.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// ETHTOOL_SGRO: generic receive offload on/off.
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns TX checksum offload on or off on a link of the calling thread's namespace.
pub fn set_tx_checksum_offload(interface: &str, on: bool) -> std::io::Result<()> {
    set(interface, ETHTOOL_STXCSUM, on)
}

/// Turns GRO on or off on a link of the calling thread's namespace. On a veth, GRO gives
/// the receiving end a NAPI context, which is what lets XDP on the node redirect frames
/// straight into a pod.
pub fn set_gro(interface: &str, on: bool) -> std::io::Result<()> {
    set(interface, ETHTOOL_SGRO, on)
}

fn set(interface: &str, cmd: u32, on: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads ifr (a name and a pointer to `value`, both alive here).
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(std::io::Error::new(
            err.kind(),
            format!("{interface}: ethtool command {cmd:#x}: {err}"),
        ));
    }
    Ok(())
}
