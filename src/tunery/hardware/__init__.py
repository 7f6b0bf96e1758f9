"""What this machine is fast at, measured rather than read from CPU flags (imports torch: training and serving
use it; the web side never does)."""
