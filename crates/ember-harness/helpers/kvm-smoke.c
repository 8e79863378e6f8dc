/*
 * kvm-smoke: prove that /dev/kvm works by running real guest code.
 *
 * Opens /dev/kvm, checks the API version, creates a VM with one 64 KiB
 * memory slot and one vCPU in real mode, and runs this guest code at
 * 0x1000:
 *
 *     mov $0x42, %al ; out %al, $0x10 ; hlt
 *
 * It expects a KVM_EXIT_IO on port 0x10 carrying 0x42, then KVM_EXIT_HLT.
 * Prints one line starting with "kvm-smoke: ok" on success and exits 0;
 * prints "kvm-smoke: FAIL ..." and exits 1 otherwise.
 *
 * Built statically by ember-harness (gcc -static) and run inside the
 * nested, emulated host (L1).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define CODE_ADDR 0x1000

static int fail(const char *what)
{
	printf("kvm-smoke: FAIL %s: %s\n", what, strerror(errno));
	return 1;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(void)
{
	static const uint8_t code[] = {
		0xb0, 0x42, /* mov $0x42, %al */
		0xe6, 0x10, /* out %al, $0x10 */
		0xf4,       /* hlt */
	};
	struct kvm_userspace_memory_region region;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_run *run;
	double t0, t1;
	int kvm, vm, vcpu, api, run_size;
	uint8_t *mem;
	int saw_io = 0;

	t0 = now_ms();
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("open /dev/kvm");
	api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		printf("kvm-smoke: FAIL api version %d, want %d\n", api, KVM_API_VERSION);
		return 1;
	}
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");

	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		return fail("mmap guest memory");
	memcpy(mem + CODE_ADDR, code, sizeof(code));
	memset(&region, 0, sizeof(region));
	region.slot = 0;
	region.guest_phys_addr = 0;
	region.memory_size = MEM_SIZE;
	region.userspace_addr = (uintptr_t)mem;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail("KVM_SET_USER_MEMORY_REGION");

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return fail("KVM_CREATE_VCPU");
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(*run))
		return fail("KVM_GET_VCPU_MMAP_SIZE");
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap kvm_run");

	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return fail("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_ADDR;
	regs.rflags = 0x2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return fail("KVM_SET_REGS");

	for (int i = 0; i < 16; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			return fail("KVM_RUN");
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t v = *((uint8_t *)run + run->io.data_offset);

			if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != 0x10 ||
			    run->io.size != 1 || v != 0x42) {
				printf("kvm-smoke: FAIL unexpected io: dir=%d port=%#x size=%d value=%#x\n",
				       run->io.direction, run->io.port, run->io.size, v);
				return 1;
			}
			saw_io = 1;
			break;
		}
		case KVM_EXIT_HLT:
			if (!saw_io) {
				printf("kvm-smoke: FAIL hlt before the port write\n");
				return 1;
			}
			t1 = now_ms();
			printf("kvm-smoke: ok api=%d exits=io(port=0x10,value=0x42),hlt irqchip=%d nr_vcpus=%d elapsed_ms=%.1f\n",
			       api, ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP),
			       ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS), t1 - t0);
			return 0;
		default:
			printf("kvm-smoke: FAIL unexpected exit reason %u\n", run->exit_reason);
			return 1;
		}
	}
	printf("kvm-smoke: FAIL guest did not halt\n");
	return 1;
}
