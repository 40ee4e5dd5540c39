package ingest

// IgnoreFasthttp is ignoreFasthttp for the external test package.
var IgnoreFasthttp = ignoreFasthttp
