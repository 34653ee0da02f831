"""The embedded demo model: a small FLUX-architecture transformer trained from scratch on procedural
class-conditioned images, shipped with its DDiT adapters, class embeddings and a scoring classifier.

`--model demo` resolves to `model.load_demo_transformer`; `ddit-export demo` runs the whole story.
"""
