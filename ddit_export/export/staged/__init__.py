"""The staged layout's export: per size a small embed and head, ONE trunk shared by every size.

build.py (the flow), onnx_export.py (dynamic-token trunk graph), validate.py (the chain against torch),
aoti.py and tensorrt.py (the other artifact kinds). File names: artifacts/layouts.py.
"""
