"""Instruction data curation (EasyInstruct's pillar) on Ray Data: generators that ask an
OpenAI-compatible model for new instructions, and selectors that keep the good ones."""
