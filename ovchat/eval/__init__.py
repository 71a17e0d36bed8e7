"""Quality: how close an exported model stays to its original (`ovchat.evaluate`, `ovchat eval`) and
the quick check an export runs on itself.

scoring.py   the shipped texts; per-window log-likelihoods against a reference
logits.py    next-token logits from OpenVINO (an exported folder) or transformers (the float original)
metrics.py   perplexity, top-1 agreement, KL, with standard errors
answers.py   greedy answers to chat prompts and their embedding similarity
check.py     the export's quick perplexity check against its source
evaluate.py  the whole evaluation and its report
report.py    the report as a table and a plot
"""
