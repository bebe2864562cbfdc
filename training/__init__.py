"""Training side of mailroute: data readers, the synthetic corpus, model training and evaluation."""
