//! Places devices on the port-I/O and MMIO buses, wires their interrupt
//! lines to KVM irqfds, hands out IRQs and MMIO slots, and collects what
//! the guest must be told about them (ACPI DSDT entries, command-line
//! announcements).

use std::io::Write;
use std::sync::{Arc, Mutex};

use ember_devices::legacy::boot_timer::HostClocks;
use ember_devices::legacy::{
    acpi_pm, cmos, i8042, AcpiPm, BootTimer, Cmos, PvPanic, SerialCounters, SerialPort,
    SystemClock, I8042,
};
use ember_devices::{Bus, BusDevice, BusError, EventFdTrigger};

use crate::arch::acpi::{AcpiDevice, Hid, Resource};
use crate::arch::layout::{
    IRQ_COM1, IRQ_I8042, IRQ_VIRTIO_FIRST, IRQ_VIRTIO_LAST, PORT_ACPI_PM, PORT_BOOT_TIMER,
    PORT_CMOS, PORT_COM1, PORT_I8042, PVPANIC_MMIO_START, VIRTIO_MMIO_END, VIRTIO_MMIO_SLOT_SIZE,
    VIRTIO_MMIO_START,
};
use crate::vm::{Vm, VmError};

/// The console UART as wired here.
pub type Console = SerialPort<EventFdTrigger, EventFdTrigger, Box<dyn Write + Send>>;
/// The keyboard controller as wired here.
pub type Keyboard = I8042<EventFdTrigger, EventFdTrigger>;

/// Errors placing devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] BusError),
    #[error("no interrupt line left for another device (IRQs {IRQ_VIRTIO_FIRST}..={IRQ_VIRTIO_LAST} are in use)")]
    OutOfIrqs,
    #[error("no MMIO slot left for another device")]
    OutOfMmio,
}

/// Events devices raise for the VMM: the guest asked to reset, to power
/// off, or panicked.
#[derive(Clone)]
pub struct GuestEvents {
    pub reset: EventFdTrigger,
    pub power_off: EventFdTrigger,
    pub panic: EventFdTrigger,
}

impl GuestEvents {
    fn new() -> Result<Self, DeviceError> {
        let e = || EventFdTrigger::new().map_err(DeviceError::EventFd);
        Ok(Self {
            reset: e()?,
            power_off: e()?,
            panic: e()?,
        })
    }
}

/// The devices of one VM and what the guest must be told about them.
pub struct DeviceManager {
    io_bus: Bus,
    mmio_bus: Bus,
    acpi_devices: Vec<AcpiDevice>,
    cmdline_extra: Vec<String>,
    next_irq: u32,
    next_mmio_slot: u64,
    pub events: GuestEvents,
    pub console: Arc<Mutex<Console>>,
    /// Fires when the console's input FIFO drains.
    pub console_input_drained: EventFdTrigger,
    pub console_counters: Arc<SerialCounters>,
    pub keyboard: Arc<Mutex<Keyboard>>,
    pub pvpanic: Arc<Mutex<PvPanic<EventFdTrigger>>>,
}

fn irq_line(vm: &Vm, gsi: u32) -> Result<EventFdTrigger, DeviceError> {
    let t = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
    vm.register_irqfd(t.eventfd(), gsi)?;
    Ok(t)
}

impl DeviceManager {
    /// Creates the platform devices: COM1, the i8042, the CMOS RTC, the
    /// ACPI sleep/reset block, pvpanic, and (if asked) the boot timer.
    pub fn new(
        vm: &Vm,
        console: Box<dyn Write + Send>,
        boot_timer: bool,
    ) -> Result<Self, DeviceError> {
        let events = GuestEvents::new()?;
        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut acpi_devices = Vec::new();

        let drained = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
        let counters = Arc::new(SerialCounters::default());
        let serial = Arc::new(Mutex::new(SerialPort::new(
            irq_line(vm, IRQ_COM1)?,
            drained.clone(),
            console,
            counters.clone(),
        )));
        io_bus.insert(serial.clone(), u64::from(PORT_COM1), 8)?;
        acpi_devices.push(AcpiDevice {
            name: "COM1".into(),
            hid: Hid::Eisa("PNP0501"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: PORT_COM1,
                    len: 8,
                },
                Resource::Irq(IRQ_COM1),
            ],
        });

        let keyboard = Arc::new(Mutex::new(I8042::new(
            irq_line(vm, IRQ_I8042)?,
            events.reset.clone(),
        )));
        io_bus.insert(keyboard.clone(), u64::from(PORT_I8042), i8042::PORT_SPAN)?;
        acpi_devices.push(AcpiDevice {
            name: "PS2K".into(),
            hid: Hid::Eisa("PNP0303"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: PORT_I8042,
                    len: 1,
                },
                Resource::Io {
                    base: PORT_I8042 + 4,
                    len: 1,
                },
                Resource::Irq(IRQ_I8042),
            ],
        });

        let rtc: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Cmos::new(SystemClock)));
        io_bus.insert(rtc, u64::from(PORT_CMOS), cmos::PORT_SPAN)?;
        acpi_devices.push(AcpiDevice {
            name: "RTC_".into(),
            hid: Hid::Eisa("PNP0B00"),
            uid: 0,
            resources: vec![Resource::Io {
                base: PORT_CMOS,
                len: 2,
            }],
        });

        let pm: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(AcpiPm::new(
            events.power_off.clone(),
            events.reset.clone(),
        )));
        io_bus.insert(pm, u64::from(PORT_ACPI_PM), acpi_pm::PORT_SPAN)?;

        let pvpanic = Arc::new(Mutex::new(PvPanic::new(events.panic.clone())));
        mmio_bus.insert(
            pvpanic.clone(),
            PVPANIC_MMIO_START,
            ember_devices::legacy::pvpanic::MMIO_SIZE,
        )?;
        acpi_devices.push(AcpiDevice {
            name: "PEVT".into(),
            hid: Hid::Str("QEMU0001"),
            uid: 0,
            resources: vec![Resource::Mem32 {
                base: PVPANIC_MMIO_START as u32,
                len: ember_devices::legacy::pvpanic::MMIO_SIZE as u32,
            }],
        });

        if boot_timer {
            let timer: Arc<Mutex<dyn BusDevice>> =
                Arc::new(Mutex::new(BootTimer::new(HostClocks, std::io::stderr())));
            io_bus.insert(timer, u64::from(PORT_BOOT_TIMER), 1)?;
        }

        Ok(Self {
            io_bus,
            mmio_bus,
            acpi_devices,
            cmdline_extra: Vec::new(),
            next_irq: IRQ_VIRTIO_FIRST,
            next_mmio_slot: VIRTIO_MMIO_START,
            events,
            console: serial,
            console_input_drained: drained,
            console_counters: counters,
            keyboard,
            pvpanic,
        })
    }

    /// Hands out the next free device interrupt line.
    pub fn allocate_irq(&mut self) -> Result<u32, DeviceError> {
        if self.next_irq > IRQ_VIRTIO_LAST {
            return Err(DeviceError::OutOfIrqs);
        }
        let irq = self.next_irq;
        self.next_irq += 1;
        Ok(irq)
    }

    /// Hands out the next virtio-mmio slot.
    pub fn allocate_mmio_slot(&mut self) -> Result<u64, DeviceError> {
        if self.next_mmio_slot + VIRTIO_MMIO_SLOT_SIZE > VIRTIO_MMIO_END {
            return Err(DeviceError::OutOfMmio);
        }
        let base = self.next_mmio_slot;
        self.next_mmio_slot += VIRTIO_MMIO_SLOT_SIZE;
        Ok(base)
    }

    /// Places a virtio-mmio transport and announces it to the guest twice:
    /// in the DSDT (for ACPI kernels) and on the command line (for kernels
    /// without ACPI).
    pub fn add_virtio_mmio(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        irq: u32,
    ) -> Result<(), DeviceError> {
        self.mmio_bus.insert(device, base, VIRTIO_MMIO_SLOT_SIZE)?;
        let index = (base - VIRTIO_MMIO_START) / VIRTIO_MMIO_SLOT_SIZE;
        self.acpi_devices.push(AcpiDevice {
            name: format!("V{index:03X}"),
            hid: Hid::Str("LNRO0005"),
            uid: index as u32,
            resources: vec![
                Resource::Mem32 {
                    base: base as u32,
                    len: VIRTIO_MMIO_SLOT_SIZE as u32,
                },
                Resource::Irq(irq),
            ],
        });
        self.cmdline_extra
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        Ok(())
    }

    /// Devices for the DSDT.
    pub fn acpi_devices(&self) -> &[AcpiDevice] {
        &self.acpi_devices
    }

    /// Boot arguments that announce devices.
    pub fn cmdline_extra(&self) -> &[String] {
        &self.cmdline_extra
    }

    /// The buses, frozen for the vCPU threads.
    pub fn buses(&self) -> (Arc<Bus>, Arc<Bus>) {
        (
            Arc::new(self.io_bus.clone()),
            Arc::new(self.mmio_bus.clone()),
        )
    }
}
