package ingest

// IgnoreConnsCleaner is ignoreConnsCleaner for the external test package.
var IgnoreConnsCleaner = ignoreConnsCleaner
