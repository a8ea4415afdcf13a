"""cgroup drivers (v1 and v2) behind one interface, chosen by ``detect_driver``."""

from forge.cgroups.base import CgroupDriver, CgroupStats, check_name
from forge.cgroups.detect import detect_driver
from forge.cgroups.v1 import CgroupV1Driver
from forge.cgroups.v2 import CgroupV2Driver

__all__ = ["CgroupDriver", "CgroupStats", "CgroupV1Driver", "CgroupV2Driver", "check_name", "detect_driver"]
