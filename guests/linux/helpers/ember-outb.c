/*
 * ember-outb: write one byte to an x86 I/O port from guest userspace.
 *
 * Usage: ember-outb PORT VALUE   (numbers in decimal or 0x-hex)
 *
 * Used by the guest init to signal ember's boot timer (port 0x440, value
 * 123) on kernels without /dev/port (Debian's cloud kernel has
 * CONFIG_DEVPORT unset). Freestanding: no libc, raw syscalls, so the binary
 * is a few KiB and needs nothing from the image.
 */

#define SYS_WRITE 1
#define SYS_EXIT 60
#define SYS_IOPERM 173

static long sys3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static void die(const char *msg, unsigned long len)
{
	sys3(SYS_WRITE, 2, (long)msg, (long)len);
	sys3(SYS_EXIT, 1, 0, 0);
	__builtin_unreachable();
}

/* Parse decimal or 0x-prefixed hex; returns -1 on error. */
static long parse(const char *s)
{
	long v = 0;
	int base = 10;

	if (!s || !*s)
		return -1;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		if (!*s)
			return -1;
	}
	for (; *s; s++) {
		int d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return -1;
		v = v * base + d;
		if (v > 0xffff)
			return -1;
	}
	return v;
}

static const char usage[] = "usage: ember-outb PORT VALUE\n";
static const char eperm[] = "ember-outb: ioperm failed\n";

__attribute__((used)) void ember_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	long port, value;

	if (argc != 3)
		die(usage, sizeof(usage) - 1);
	port = parse(argv[1]);
	value = parse(argv[2]);
	if (port < 0 || value < 0 || value > 0xff)
		die(usage, sizeof(usage) - 1);
	if (sys3(SYS_IOPERM, port, 1, 1) != 0)
		die(eperm, sizeof(eperm) - 1);
	__asm__ volatile("outb %b0, %w1" : : "a"(value), "Nd"(port));
	sys3(SYS_EXIT, 0, 0, 0);
	__builtin_unreachable();
}

/* Entry point: pass the initial stack pointer (argc, argv...) to C. */
__asm__(".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call ember_main\n"
	"	hlt\n");
