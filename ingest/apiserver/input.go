package apiserver

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// fields is a decoded JSON object whose members are checked one by one, so
// that a wrong type gets an error naming the field. Unknown members are
// ignored, as Attune does.
type fields map[string]json.RawMessage

func decodeObject(body []byte) (fields, error) {
	if firstByte(body) != '{' {
		return nil, errorf(http.StatusBadRequest, "body must be a JSON object")
	}
	var f fields
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
	return f, nil
}

// get returns the member, or nil when it is absent or null.
func (f fields) get(name string) json.RawMessage {
	v, ok := f[name]
	if !ok || isNull(v) {
		return nil
	}
	return v
}

func (f fields) has(name string) bool {
	_, ok := f[name]
	return ok
}

// str reads a string member; ok is false when it is absent or null.
func (f fields) str(name string) (v string, ok bool, err error) {
	raw := f.get(name)
	if raw == nil {
		return "", false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", false, errorf(http.StatusBadRequest, "%s: must be a string", name)
	}
	return v, true, nil
}

// requiredStr is str for a field that must be there.
func (f fields) requiredStr(name string) (string, error) {
	v, ok, err := f.str(name)
	if err == nil && !ok {
		err = errorf(http.StatusBadRequest, "%s: required", name)
	}
	return v, err
}

func (f fields) boolean(name string) (v bool, ok bool, err error) {
	raw := f.get(name)
	if raw == nil {
		return false, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, false, errorf(http.StatusBadRequest, "%s: must be a boolean", name)
	}
	return v, true, nil
}

// object reads a JSON object member, compacted; nil when absent or null.
func (f fields) object(name string) (json.RawMessage, error) {
	raw := f.get(name)
	if raw == nil {
		return nil, nil
	}
	if firstByte(raw) != '{' {
		return nil, errorf(http.StatusBadRequest, "%s: must be a JSON object", name)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, errorf(http.StatusBadRequest, "%s: %v", name, err)
	}
	return buf.Bytes(), nil
}

// positiveInt reads a positive int64 member; ok is false when absent or null.
func (f fields) positiveInt(name string) (v int64, ok bool, err error) {
	raw := f.get(name)
	if raw == nil {
		return 0, false, nil
	}
	v, err = strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil || v <= 0 {
		return 0, false, errorf(http.StatusBadRequest, "%s: must be a positive integer", name)
	}
	return v, true, nil
}

// canonicalObject re-encodes a JSON object with sorted keys, so that two
// spellings of the same parameters compare equal. Numbers keep their digits.
func canonicalObject(raw json.RawMessage) (json.RawMessage, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v map[string]any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func firstByte(b []byte) byte {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

const (
	maxRefLen        = 255
	maxInstanceIDLen = 1024
	maxIdemKeyLen    = 512
)

// checkRef validates a rule ref: it travels in URL paths, so no '/', '?',
// '#', '%', spaces or control characters.
func checkRef(field, ref string) error {
	if ref == "" {
		return errorf(http.StatusBadRequest, "%s: must not be empty", field)
	}
	if len(ref) > maxRefLen {
		return errorf(http.StatusBadRequest, "%s: longer than %d bytes", field, maxRefLen)
	}
	if !utf8.ValidString(ref) || strings.ContainsFunc(ref, func(r rune) bool {
		return r == '/' || r == '?' || r == '#' || r == '%' || unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) {
		return errorf(http.StatusBadRequest, "%s: %q has a character not allowed in a ref", field, ref)
	}
	return nil
}

// checkName validates a trigger or action ref: non-empty and bounded.
func checkName(field, v string) error {
	if v == "" {
		return errorf(http.StatusBadRequest, "%s: must not be empty", field)
	}
	if len(v) > maxRefLen {
		return errorf(http.StatusBadRequest, "%s: longer than %d bytes", field, maxRefLen)
	}
	return nil
}

// pageParams reads page (1-based, default 1) and page_size (default 100,
// 1..1000). Anything else is a 400.
func pageParams(r *http.Request) (page, size int, err error) {
	q := r.URL.Query()
	page, size = 1, 100
	if v := q.Get("page"); v != "" || q.Has("page") {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > 1_000_000_000 {
			return 0, 0, errorf(http.StatusBadRequest, "page: %q is not an integer in 1..1000000000", v)
		}
		page = n
	}
	if v := q.Get("page_size"); v != "" || q.Has("page_size") {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > 1000 {
			return 0, 0, errorf(http.StatusBadRequest, "page_size: %q is not an integer in 1..1000", v)
		}
		size = n
	}
	return page, size, nil
}

type pagination struct {
	Page        int   `json:"page"`
	PageSize    int   `json:"page_size"`
	TotalItems  int64 `json:"total_items"`
	TotalPages  int64 `json:"total_pages"`
	HasNext     bool  `json:"has_next"`
	HasPrevious bool  `json:"has_previous"`
}

func newPagination(page, size int, total int64) pagination {
	pages := (total + int64(size) - 1) / int64(size)
	return pagination{
		Page: page, PageSize: size, TotalItems: total, TotalPages: pages,
		HasNext: int64(page) < pages, HasPrevious: page > 1,
	}
}

type listResponse struct {
	Items      []json.RawMessage `json:"items"`
	Pagination pagination        `json:"pagination"`
}
