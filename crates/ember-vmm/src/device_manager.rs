//! Places devices on the port-I/O and MMIO buses, wires their interrupt
//! lines to KVM irqfds, hands out IRQs and MMIO slots, and collects what
//! the guest must be told about them (ACPI DSDT entries, command-line
//! announcements).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use ember_devices::legacy::boot_timer::HostClocks;
use ember_devices::legacy::cmos::CmosState;
use ember_devices::legacy::i8042::I8042State;
use ember_devices::legacy::pvpanic::PvPanicState;
use ember_devices::legacy::serial::SerialPortState;
use ember_devices::legacy::{
    acpi_pm, cmos, i8042, AcpiPm, BootTimer, Cmos, LegacyStateError, PvPanic, SerialCounters,
    SerialPort, SystemClock, I8042,
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
    #[error("cannot restore a platform device: {0}")]
    Legacy(#[from] LegacyStateError),
    #[error("a device cannot sit at MMIO {base:#x} with IRQ {irq}: {why}")]
    BadPlacement {
        base: u64,
        irq: u32,
        why: &'static str,
    },
}

/// Where a virtio-mmio device sits: its 4 KiB window and its IRQ line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub mmio_base: u64,
    pub irq: u32,
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

/// The guest-visible state of the platform devices (their places are
/// fixed, so only their registers are saved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyState {
    pub serial: SerialPortState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    pub pvpanic: PvPanicState,
}

/// The devices of one VM and what the guest must be told about them.
pub struct DeviceManager {
    io_bus: Bus,
    mmio_bus: Bus,
    acpi_devices: Vec<AcpiDevice>,
    cmdline_extra: Vec<String>,
    used_irqs: BTreeSet<u32>,
    used_slots: BTreeSet<u64>,
    pub events: GuestEvents,
    pub console: Arc<Mutex<Console>>,
    /// Fires when the console's input FIFO drains.
    pub console_input_drained: EventFdTrigger,
    pub console_counters: Arc<SerialCounters>,
    pub keyboard: Arc<Mutex<Keyboard>>,
    pub pvpanic: Arc<Mutex<PvPanic<EventFdTrigger>>>,
    pub rtc: Arc<Mutex<Cmos<SystemClock>>>,
}

fn irq_line(vm: &Vm, gsi: u32) -> Result<EventFdTrigger, DeviceError> {
    let t = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
    vm.register_irqfd(t.eventfd(), gsi)?;
    Ok(t)
}

impl DeviceManager {
    /// Creates the platform devices: COM1, the i8042, the CMOS RTC, the
    /// ACPI sleep/reset block, pvpanic, and (if asked) the boot timer; in
    /// their power-on state, or in `legacy` (a restore).
    pub fn new(
        vm: &Vm,
        console: Box<dyn Write + Send>,
        boot_timer: bool,
        legacy: Option<&LegacyState>,
    ) -> Result<Self, DeviceError> {
        let events = GuestEvents::new()?;
        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut acpi_devices = Vec::new();

        let drained = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
        let counters = Arc::new(SerialCounters::default());
        let com1 = irq_line(vm, IRQ_COM1)?;
        let serial = Arc::new(Mutex::new(match legacy {
            None => SerialPort::new(com1, drained.clone(), console, counters.clone()),
            Some(l) => {
                SerialPort::from_state(com1, drained.clone(), console, counters.clone(), &l.serial)?
            }
        }));
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

        let kbd_irq = irq_line(vm, IRQ_I8042)?;
        let keyboard = Arc::new(Mutex::new(match legacy {
            None => I8042::new(kbd_irq, events.reset.clone()),
            Some(l) => I8042::from_state(kbd_irq, events.reset.clone(), &l.i8042)?,
        }));
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

        let rtc = Arc::new(Mutex::new(match legacy {
            None => Cmos::new(SystemClock),
            Some(l) => Cmos::from_state(SystemClock, &l.cmos)?,
        }));
        io_bus.insert(rtc.clone(), u64::from(PORT_CMOS), cmos::PORT_SPAN)?;
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

        let pvpanic = Arc::new(Mutex::new(match legacy {
            None => PvPanic::new(events.panic.clone()),
            Some(l) => PvPanic::from_state(events.panic.clone(), &l.pvpanic)?,
        }));
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
            used_irqs: BTreeSet::new(),
            used_slots: BTreeSet::new(),
            events,
            console: serial,
            console_input_drained: drained,
            console_counters: counters,
            keyboard,
            pvpanic,
            rtc,
        })
    }

    /// The platform devices' state.
    pub fn save_legacy(&self) -> LegacyState {
        fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
        LegacyState {
            serial: lock(&self.console).state(),
            i8042: lock(&self.keyboard).state(),
            cmos: lock(&self.rtc).state(),
            pvpanic: lock(&self.pvpanic).state(),
        }
    }

    /// Hands out the lowest free MMIO slot and device interrupt line.
    pub fn allocate(&mut self) -> Result<Placement, DeviceError> {
        let irq = (IRQ_VIRTIO_FIRST..=IRQ_VIRTIO_LAST)
            .find(|i| !self.used_irqs.contains(i))
            .ok_or(DeviceError::OutOfIrqs)?;
        let mmio_base = (VIRTIO_MMIO_START..VIRTIO_MMIO_END)
            .step_by(VIRTIO_MMIO_SLOT_SIZE as usize)
            .find(|b| b + VIRTIO_MMIO_SLOT_SIZE <= VIRTIO_MMIO_END && !self.used_slots.contains(b))
            .ok_or(DeviceError::OutOfMmio)?;
        self.claim(Placement { mmio_base, irq })
    }

    /// Takes a recorded placement (from a snapshot, say), after checking it
    /// is a real slot and IRQ and that no other device has them.
    pub fn claim(&mut self, p: Placement) -> Result<Placement, DeviceError> {
        let bad = |why| DeviceError::BadPlacement {
            base: p.mmio_base,
            irq: p.irq,
            why,
        };
        if !(IRQ_VIRTIO_FIRST..=IRQ_VIRTIO_LAST).contains(&p.irq) {
            return Err(bad("the IRQ is outside the virtio range"));
        }
        let in_range = p.mmio_base >= VIRTIO_MMIO_START
            && p.mmio_base
                .checked_add(VIRTIO_MMIO_SLOT_SIZE)
                .is_some_and(|end| end <= VIRTIO_MMIO_END);
        if !in_range || !(p.mmio_base - VIRTIO_MMIO_START).is_multiple_of(VIRTIO_MMIO_SLOT_SIZE) {
            return Err(bad("the address is not a virtio-mmio slot"));
        }
        if self.used_irqs.contains(&p.irq) {
            return Err(bad("another device has the IRQ"));
        }
        if self.used_slots.contains(&p.mmio_base) {
            return Err(bad("another device has the slot"));
        }
        self.used_irqs.insert(p.irq);
        self.used_slots.insert(p.mmio_base);
        Ok(p)
    }

    /// Places a virtio-mmio transport and announces it to the guest twice:
    /// in the DSDT (for ACPI kernels) and on the command line (for kernels
    /// without ACPI).
    pub fn add_virtio_mmio(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        at: Placement,
    ) -> Result<(), DeviceError> {
        let (base, irq) = (at.mmio_base, at.irq);
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
