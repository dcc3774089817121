"""The delivery engine, the same under every wire: the index poller (`notifier`), shared reads
(`reads`), one subscriber's delivery (`session`), and a publish (`publishing`)."""
