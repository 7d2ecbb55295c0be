//! The safety net of the dump: a signal frame (`struct rt_sigframe`, x86-64,
//! arch/x86/include/asm/sigframe.h) of a task's own registers, signal mask and
//! FPU state, written in unused stack below its red zone before anything of the
//! task is changed.
//!
//! Injected calls then run with `rip` on a vDSO `syscall` that is followed only
//! by register-clearing instructions and `ret`, and with `rsp` on the frame,
//! whose first word (`pretcode`) is the address of a `mov $15,%eax; syscall`
//! (rt_sigreturn) in the task's C library. If the checkpointer dies at any
//! moment, the kernel detaches the task, which finishes the call, returns into
//! rt_sigreturn(2) and continues exactly where it was stopped: every register,
//! the mask and the FPU state come back from the frame. Only the dead stack
//! bytes under the frame differ.

/// What the frame needs from the task.
pub struct State<'a> {
    /// General registers to return to (an interrupted call set to be entered again).
    pub regs: &'a libc::user_regs_struct,
    pub sigmask: u64,
    /// The XSAVE area as PTRACE_GETREGSET NT_X86_XSTATE gives it.
    pub xstate: &'a [u8],
    /// Address of an rt_sigreturn sequence in the task.
    pub restorer: u64,
}

/// A frame laid out below a stack pointer.
pub struct Frame {
    /// Lowest address written; the bytes from here to the end of `bytes`.
    pub low: u64,
    pub bytes: Vec<u8>,
    /// Stack pointer for injected calls (the `pretcode` slot).
    pub slot: u64,
    /// 256 bytes of scratch memory for the results of injected calls.
    pub scratch: u64,
}

const SCRATCH: u64 = 256;
const RED_ZONE: u64 = 128;
/// pretcode + ucontext (uc_flags, uc_link, uc_stack, sigcontext, sigmask) + siginfo.
const FRAME_LEN: u64 = 8 + 8 + 8 + 24 + 256 + 8 + 128;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// An invalid sigaltstack mode: rt_sigreturn then leaves the task's alternate
/// signal stack as it is (the error is ignored by the kernel).
const SS_LEAVE_ALONE: u32 = 3;

fn put(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Lays out the frame for a task whose stack pointer is `regs.rsp`. None if the
/// XSAVE area is too small to be one.
pub fn build(s: &State) -> Option<Frame> {
    let x = s.xstate;
    let xsize = x.len() as u64;
    if xsize < 576 {
        return None;
    }
    // ptrace puts XCR0 in the first software-reserved word; a signal frame
    // describes itself there instead (struct _fpx_sw_bytes).
    let xcr0 = u64::from_le_bytes(x[464..472].try_into().ok()?);
    let top = s.regs.rsp.checked_sub(RED_ZONE)? & !63;
    let need = SCRATCH + FRAME_LEN + 64 + xsize + 4;
    let low = top.checked_sub(need)? & !63;
    let scratch = low;
    let slot = low + SCRATCH;
    let fpstate = (slot + FRAME_LEN + 63) & !63;
    let mut b = vec![0u8; (fpstate + xsize + 4 - low) as usize];
    let at = |a: u64| (a - low) as usize;
    let r = s.regs;
    put(&mut b, at(slot), s.restorer);
    let uc = slot + 8;
    put(
        &mut b,
        at(uc),
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    // uc_stack: ss_sp, ss_flags, ss_size.
    b[at(uc + 24)..at(uc + 28)].copy_from_slice(&SS_LEAVE_ALONE.to_le_bytes());
    // uc_flags, uc_link, uc_stack (24 bytes), then the sigcontext.
    let sc = uc + 40;
    let words = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, w) in words.iter().enumerate() {
        put(&mut b, at(sc) + i * 8, *w);
    }
    // cs, gs, fs, ss as 16-bit fields.
    let segs = [r.cs as u16, 0, 0, r.ss as u16];
    for (i, v) in segs.iter().enumerate() {
        let o = at(sc) + 144 + i * 2;
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    put(&mut b, at(sc) + 184, fpstate);
    put(&mut b, at(uc + 296), s.sigmask);
    let f = at(fpstate);
    b[f..f + xsize as usize].copy_from_slice(x);
    let sw = f + 464;
    b[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    b[sw + 4..sw + 8].copy_from_slice(&(xsize as u32 + 4).to_le_bytes());
    b[sw + 8..sw + 16].copy_from_slice(&xcr0.to_le_bytes());
    b[sw + 16..sw + 20].copy_from_slice(&(xsize as u32).to_le_bytes());
    b[sw + 20..sw + 48].fill(0);
    b[f + xsize as usize..f + xsize as usize + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    Some(Frame {
        low,
        bytes: b,
        slot,
        scratch,
    })
}

/// Offset of a `syscall` in `code` (a vDSO) that is followed only by
/// instructions clearing registers (`xor r,r`) and then `ret`.
pub fn find_ret_gadget(code: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 < code.len() {
        if code[i] == 0x0f && code[i + 1] == 0x05 {
            let mut j = i + 2;
            loop {
                match code.get(j..) {
                    Some([0xc3, ..]) => return Some(i),
                    // xor r32,r32 with the same register (modrm mod=11, reg=rm).
                    Some([0x31 | 0x33, m, ..]) if self_xor(*m) => j += 2,
                    Some([0x40..=0x4f, 0x31 | 0x33, m, ..]) if self_xor(*m) => j += 3,
                    _ => break,
                }
            }
        }
        i += 1;
    }
    None
}

fn self_xor(modrm: u8) -> bool {
    modrm >> 6 == 3 && (modrm >> 3) & 7 == modrm & 7
}

/// Offset of `mov $15,%rax; syscall` or `mov $15,%eax; syscall` (rt_sigreturn,
/// as C libraries write their signal restorer) in `code`.
pub fn find_sigreturn(code: &[u8]) -> Option<usize> {
    const LONG: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
    const SHORT: [u8; 7] = [0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05];
    code.windows(LONG.len())
        .position(|w| w == LONG)
        .or_else(|| code.windows(SHORT.len()).position(|w| w == SHORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gadgets_are_found_only_when_safe() {
        // syscall; xor edx,edx; xor r11d,r11d; ret
        let ok = [0x90, 0x0f, 0x05, 0x31, 0xd2, 0x45, 0x31, 0xdb, 0xc3];
        assert_eq!(find_ret_gadget(&ok), Some(1));
        // syscall; leave; ret: leave changes rsp, not usable.
        assert_eq!(find_ret_gadget(&[0x0f, 0x05, 0xc9, 0xc3]), None);
        // xor edx,eax is not a clearing instruction.
        assert_eq!(find_ret_gadget(&[0x0f, 0x05, 0x31, 0xc2, 0xc3]), None);
        let code = [0x55, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90];
        assert_eq!(find_sigreturn(&code), Some(1));
        assert_eq!(find_sigreturn(&[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05]), Some(0));
    }

    #[test]
    fn frame_layout() {
        let mut x = vec![0u8; 832];
        x[464..472].copy_from_slice(&7u64.to_le_bytes());
        x[0] = 0x7f;
        let mut r: libc::user_regs_struct = super::super::sys::words_to_regs(&[0; 27]);
        r.rsp = 0x7fff_0000_1008;
        r.rip = 0x4000;
        let f = build(&State {
            regs: &r,
            sigmask: 0x55,
            xstate: &x,
            restorer: 0x1234,
        })
        .unwrap();
        let end = f.low + f.bytes.len() as u64;
        assert!(end <= r.rsp - RED_ZONE);
        assert_eq!(f.slot, f.low + SCRATCH);
        let word = |a: u64| {
            let o = (a - f.low) as usize;
            u64::from_le_bytes(f.bytes[o..o + 8].try_into().unwrap())
        };
        assert_eq!(word(f.slot), 0x1234);
        // sigcontext ip at uc + 40 + 16 * 8; mask at uc + 296.
        assert_eq!(word(f.slot + 8 + 40 + 128), 0x4000);
        assert_eq!(word(f.slot + 8 + 296), 0x55);
        let fp = word(f.slot + 8 + 40 + 184);
        assert_eq!(fp % 64, 0);
        assert_eq!(f.bytes[(fp - f.low) as usize], 0x7f);
        let m2 = (fp + 832 - f.low) as usize;
        assert_eq!(&f.bytes[m2..m2 + 4], &FP_XSTATE_MAGIC2.to_le_bytes());
        let sw = (fp + 464 - f.low) as usize;
        assert_eq!(&f.bytes[sw..sw + 4], &FP_XSTATE_MAGIC1.to_le_bytes());
        assert_eq!(&f.bytes[sw + 8..sw + 16], &7u64.to_le_bytes());
    }
}
