//! Raw mode for an interactive console, restored on every way out.

use std::os::fd::AsRawFd;

/// Puts standard input in raw mode while alive, when it is a terminal.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Raw mode (no echo, no line editing, no signals from keys) if stdin
    /// is a terminal; otherwise does nothing.
    pub fn enable() -> Self {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; zeroed is a valid initial value.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into the termios we own.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        // SAFETY: tcsetattr reads the termios we own.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        Self { saved: Some(saved) }
    }

    /// Restores the saved mode now (also done on drop).
    pub fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            // SAFETY: tcsetattr reads the termios we own.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Whether standard input can feed the console: a terminal, pipe or socket.
pub fn stdin_is_interactive_or_stream() -> bool {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: stat is plain data; zeroed is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat we own.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    // SAFETY: isatty only inspects the fd.
    let tty = unsafe { libc::isatty(fd) } == 1;
    tty || kind == libc::S_IFIFO || kind == libc::S_IFSOCK
}
