"""Devices on the Pi behind injectable backends: GNSS, modems, GPIO, power, the clock."""
