"""The books: where every file goes, fingerprints, completion records and pending reasons,
the kept record checks, the commit protocol, status, and the strict JSON of every contract."""
