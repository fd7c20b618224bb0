"""The audit record: ledger, HTML report, JUnit properties, transcripts, redaction."""
