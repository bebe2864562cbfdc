"""Email parsing (MIME, mbox, .eml) and the text cleaning that training and serving share."""
