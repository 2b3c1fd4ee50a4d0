"""DeRA-MOS training reproduction: backbones, heads, losses, data, train / evaluate CLIs."""
