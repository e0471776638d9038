"""The outside world, simulated: modems, radios, drone, satellites, link conditions."""
