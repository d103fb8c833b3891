"""knowlm-ray: the KnowLM / ZhiXi recipe as one distributed job system on Ray."""

__version__ = "0.1.0"
