"""The demo's tuned scheduler settings: `ddit-export demo` samples with them and the demo engines' manifest
carries them, so `ddit-export generate engines/demo` schedules as the demo reports."""

# Chosen by measurement on the demo (model and rank-64 adapters of 2026-12-02, ONNX Runtime CPU with
# per-engine threading, 28 steps): the setting that reaches 1.8x with a margin, PSNR >= 25 dB against
# the base and the base's class accuracy. Base: 91.7% on 48 samples, 95.8% on 144.
#   sizes 2,4   tau 0.003 : 1.72x, 28.2 dB, 91.7%, FD 121 (base 129)
#               tau 0.0035: 1.79x, 27.7 dB, 91.7%; 144 samples 1.80x, 27.0 dB, 95.8%
#               tau 0.004 : 1.83x, 27.5 dB, 91.7%, FD 110; 144 samples 1.82x, 26.7 dB, 95.8%, FD 66 (base 82)
#   sizes 2,4,8 tau 0.003 : 1.44x, 26.7 dB, 89.6%, FD 222
# At tau 0.004 almost every step after the 3 warm-up steps runs at size 4 (2 of 4032 steps went back
# to the base on 144 samples): on this model the statistic stays below tau while size 4 runs. The size-8
# student is too far from the teacher for long size-8 runs (velocity MSE 0.014-0.038 on early steps
# against 0.004-0.006 at size 4; tools/demo_step_errors.py), so DDiT picks from 2 and 4 by default;
# --sizes 2,4,8 lets it use every engine.
DEFAULT_TAU = 0.004
DEFAULT_SIZES = (2, 4)
DEFAULT_RULE = "paper"
