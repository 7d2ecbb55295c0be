//! timerfd_create(2): clock, remaining time and interval, and the expirations
//! not read yet (fdinfo `clockid`, `ticks`, `it_value`, `it_interval`), set
//! again with timerfd_settime(2) and the TFD_IOC_SET_TICKS ioctl.

use std::os::fd::OwnedFd;

use super::{parse_pair, FdInfo};
use crate::ckpt::image::TimerFd;

pub fn dump(info: &FdInfo) -> Option<TimerFd> {
    Some(TimerFd {
        clock: info.get("clockid:")?.parse().ok()?,
        ticks: info.get("ticks:")?.parse().ok()?,
        value: parse_pair(info.get("it_value:")?)?,
        interval: parse_pair(info.get("it_interval:")?)?,
    })
}

pub fn restore(t: &TimerFd) -> nix::Result<OwnedFd> {
    let fd = super::check_fd(crate::ckpt::sys::timerfd_create(t.clock))?;
    // fdinfo shows the time left, so the timer is set again relative to now. A
    // periodic timer that expired and was not read yet shows none: the kernel
    // re-arms it at the read; here the next expiry is one interval away.
    let value = if t.value == (0, 0) {
        t.interval
    } else {
        t.value
    };
    crate::ckpt::sys::timerfd_settime(&fd, value, t.interval)?;
    if t.ticks > 0 {
        crate::ckpt::sys::timerfd_set_ticks(&fd, t.ticks)?;
    }
    Ok(fd)
}
