"""MicroPython firmware for the companion microcontroller (a Raspberry Pi Pico) and its flasher."""
