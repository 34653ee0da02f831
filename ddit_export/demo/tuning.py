"""The demo's tuned scheduler settings: `ddit-export demo` samples with them and the demo engines' manifest
carries them, so `ddit-export generate engines/demo` schedules as the demo reports."""

# Chosen by measurement on the 9-class demo (6 flat, 3 textured classes; adapters of 2026-12-02), ONNX
# Runtime CPU, 28 steps, tuning seeds 0-2 x 9 classes, `ddit-export schedules` against 102 fixed schedules
# (docs/method.md, "Rules"). Token cost / PSNR vs the static base / accuracy (base 100%):
#   coarse-to-fine tau 0.003 : 0.245, 24.03 dB, 88.9%  above the fixed front (front 23.82 dB at that cost)
#   coarse-to-fine tau 0.004 : 0.125, 22.35 dB, 85.2%  above the front (22.26 dB)
#   paper tau 0.003 (2,4,8)  : 0.671, 26.41 dB, 92.6%  below the front (30.95 dB)
#   paper tau 0.004 (2,4,8)  : 0.218, 19.42 dB, 85.2%  below the front (23.66 dB)
DEFAULT_TAU = 0.003
DEFAULT_SIZES = (2, 4, 8)
DEFAULT_RULE = "coarse-to-fine"
