"""The APIs besides OpenAI's that `ovchat serve` speaks: each translates its requests into ovchat's and
its answers back, over the one validation and generation path in serving.py."""
