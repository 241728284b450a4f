"""Reads from the session's terminal: snapshot-backed (account, positions, orders, last ticks) and
request/reply over the terminal's read queue (symbols, bars, ticks, depth, history). See docs/reads.md."""
