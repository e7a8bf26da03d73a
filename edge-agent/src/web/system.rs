//! What the page says about the box itself: free space on the disk that holds the state folder
//! (statvfs) and the CPU temperature (the hottest zone in /sys/class/thermal).

use std::path::Path;

pub use crate::base::disk::{disk_space, DiskSpace};

/// The hottest thermal zone in °C; `None` where the kernel has none (containers, some VMs).
pub fn cpu_temperature() -> Option<f64> {
    hottest_zone(Path::new("/sys/class/thermal"))
}

fn hottest_zone(root: &Path) -> Option<f64> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("temp")).ok())
        .filter_map(|text| text.trim().parse::<f64>().ok())
        // Millidegrees; some drivers report nonsense (negative, or absurd) when a sensor is absent.
        .map(|millidegrees| millidegrees / 1000.0)
        .filter(|celsius| (-40.0..=150.0).contains(celsius))
        .reduce(f64::max)
}

/// `12.3 GB`, `512 MB`: for people, in powers of 1000 like disk makers.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_folder_has_some_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(&dir.path().join("not/yet/made")).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
    }

    #[test]
    fn the_hottest_sane_zone_wins() {
        let root = tempfile::tempdir().unwrap();
        for (zone, temp) in [("thermal_zone0", "45500\n"), ("thermal_zone1", "61000\n"), ("thermal_zone2", "-273000\n")]
        {
            std::fs::create_dir(root.path().join(zone)).unwrap();
            std::fs::write(root.path().join(zone).join("temp"), temp).unwrap();
        }
        std::fs::create_dir(root.path().join("cooling_device0")).unwrap();
        assert_eq!(hottest_zone(root.path()), Some(61.0));
        assert_eq!(hottest_zone(&root.path().join("missing")), None);
    }

    #[test]
    fn bytes_read_like_a_disk_label() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345_678_901), "12.3 GB");
    }
}
