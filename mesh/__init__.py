"""Meshtastic: team messages and positions, downlink to the team, kit-to-kit relay."""
