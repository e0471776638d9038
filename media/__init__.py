"""Media: drone video, photos and voice notes, recorded locally and sent as links allow."""
