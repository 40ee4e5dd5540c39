package node

// SettingError says which setting made New fail, so that the command line can
// name it (and its flag) without reading the error's text. Setting is the
// environment name of the setting, such as TIMERD_HTTP_ADDR.
type SettingError struct {
	Setting string
	Err     error
}

func (e *SettingError) Error() string { return e.Setting + ": " + e.Err.Error() }

func (e *SettingError) Unwrap() error { return e.Err }
