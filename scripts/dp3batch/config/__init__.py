"""The configuration: the JSON schema (package data), both `steps:` formats, and the
error every config stage raises."""
