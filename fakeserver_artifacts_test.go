package main

// The fake Debusine server's artifact side: downloads, artifact creation,
// uploads with Debusine's Range behaviour, relations, assets and the
// permission check (fakeserver_test.go has the workers and scheduling).

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

func (s *fakeServer) artifactJSON(a *fakeArtifact) map[string]any {
	files := map[string]any{}
	toUpload := []string{}
	for name, f := range a.Files {
		files[name] = map[string]any{"size": f.Size, "checksums": map[string]string{"sha256": f.SHA256}, "type": "file",
			"url": fmt.Sprintf("%s/debusine/System/artifact/%d/download/%s", s.srv.URL, a.ID, name), "content_type": f.ContentType}
		if !f.complete {
			toUpload = append(toUpload, name)
		}
	}
	slices.Sort(toUpload)
	return map[string]any{"id": a.ID, "url": fmt.Sprintf("/debusine/System/artifact/%d/", a.ID), "scope": "debusine",
		"workspace": a.Workspace, "category": a.Category, "data": a.Data, "created_at": "2025-03-01T09:59:00Z",
		"expire_at": nil, "download_tar_gz_url": "", "files_to_upload": toUpload, "files": files}
}

func (s *fakeServer) download(w http.ResponseWriter, r *http.Request, m []string) {
	if wk, _ := s.worker(r); wk == nil {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	m[2], _ = url.PathUnescape(m[2])
	a := s.artifacts[id]
	if a == nil || a.Files[m[2]] == nil {
		problem(w, 404, "Not found", "")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(a.Files[m[2]].content)
}

func (s *fakeServer) createArtifact(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Category    string                     `json:"category"`
		Workspace   string                     `json:"workspace"`
		Files       map[string]json.RawMessage `json:"files"`
		Data        json.RawMessage            `json:"data"`
		WorkRequest *int64                     `json:"work_request"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Category == "" {
		problem(w, 400, "Cannot deserialize artifact", "")
		return
	}
	if req.WorkRequest != nil {
		if wk, _ := s.worker(r); wk == nil {
			problem(w, 403, "work_request field can only be used by a request with a token from a Worker", "")
			return
		}
	}
	if req.Workspace != "" && req.Workspace != "System" {
		problem(w, 404, "Workspace not found", fmt.Sprintf("Workspace %s not found in scope debusine", req.Workspace))
		return
	}
	a := &fakeArtifact{ID: s.newID(), Category: req.Category, Workspace: "System", Data: req.Data, Files: map[string]*fakeFile{}}
	if req.WorkRequest != nil {
		a.WorkRequest = *req.WorkRequest
	}
	for name, raw := range req.Files {
		var f struct {
			Size        *int64            `json:"size"`
			Checksums   map[string]string `json:"checksums"`
			Type        string            `json:"type"`
			ContentType *string           `json:"content_type"`
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil || f.Size == nil || *f.Size < 0 || !reHex64.MatchString(f.Checksums["sha256"]) || len(f.Checksums) != 1 || f.Type != "file" {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]any{"title": "Cannot deserialize artifact", "validation_errors": map[string]any{"files": []string{name}}})
			return
		}
		a.Files[name] = &fakeFile{Size: *f.Size, SHA256: f.Checksums["sha256"], ContentType: f.ContentType, complete: *f.Size == 0}
	}
	s.artifacts[a.ID] = a
	writeJSON(w, 201, s.artifactJSON(a))
}

// upload implements docs/protocol.md §4.3, Range quirk included.
func (s *fakeServer) upload(w http.ResponseWriter, r *http.Request, body []byte, m []string) {
	cr := r.Header.Get("Content-Range")
	m[2], _ = url.PathUnescape(m[2])
	s.uploadLog = append(s.uploadLog, m[1]+"/"+m[2]+" "+cr)
	if wk, _ := s.worker(r); wk == nil {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	a := s.artifacts[id]
	var f *fakeFile
	if a != nil {
		f = a.Files[m[2]]
	}
	if f == nil {
		problem(w, 404, "Not found", "")
		return
	}
	if rest, ok := strings.CutPrefix(cr, "bytes */"); ok {
		size, _ := strconv.ParseInt(rest, 10, 64)
		switch {
		case size != f.Size:
			problem(w, 400, "Invalid file size in Content-Range header", fmt.Sprintf("Expected %d", f.Size))
		case f.complete:
			w.WriteHeader(200)
		default:
			w.Header().Set("Range", fmt.Sprintf("bytes=0-%d", len(f.content)))
			w.WriteHeader(206)
		}
		return
	}
	var start, end, size int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &size); err != nil || size != f.Size {
		problem(w, 400, "Invalid Content-Range header", cr)
		return
	}
	if f.complete {
		w.WriteHeader(201)
		return
	}
	switch {
	case start > int64(len(f.content)):
		problem(w, 400, "Invalid Content-Range", fmt.Sprintf("Server had received %d bytes of the file. New upload starts at %d. Please continue from %d", len(f.content), start, len(f.content)))
		return
	case int64(len(body)) != end-start+1:
		problem(w, 400, "Invalid body length", "")
		return
	case end >= size:
		problem(w, 400, "Writing past the end of the file", "")
		return
	}
	// Like Debusine, write at start over what it holds: a chunk may
	// start before the end of what was received, never after it.
	if grown := start + int64(len(body)); grown > int64(len(f.content)) {
		f.content = append(f.content, make([]byte, grown-int64(len(f.content)))...)
	}
	copy(f.content[start:], body)
	if int64(len(f.content)) < f.Size {
		w.Header().Set("Range", fmt.Sprintf("bytes=0-%d", len(f.content)))
		w.WriteHeader(200)
		return
	}
	h := sha256.Sum256(f.content)
	if got := hex.EncodeToString(h[:]); got != f.SHA256 {
		f.content = nil
		problem(w, 409, fmt.Sprintf("Invalid file hash. Expected: %s Received: %s", f.SHA256, got), "")
		return
	}
	f.complete = true
	w.WriteHeader(201)
}

func (s *fakeServer) complete(id int64) bool {
	a := s.artifacts[id]
	if a == nil {
		return false
	}
	for _, f := range a.Files {
		if !f.complete {
			return false
		}
	}
	return true
}

func (s *fakeServer) relation(w http.ResponseWriter, body []byte) {
	var rel fakeRelation
	var req struct {
		Artifact int64  `json:"artifact"`
		Target   int64  `json:"target"`
		Type     string `json:"type"`
	}
	if err := json.Unmarshal(body, &req); err != nil || !slices.Contains([]string{"extends", "relates-to", "built-using"}, req.Type) {
		problem(w, 400, "Cannot deserialize relation", "")
		return
	}
	if !s.complete(req.Artifact) {
		problem(w, 400, fmt.Sprintf("Cannot create relation: source artifact %d is incomplete", req.Artifact), "")
		return
	}
	if !s.complete(req.Target) {
		problem(w, 400, fmt.Sprintf("Cannot create relation: target artifact %d is incomplete", req.Target), "")
		return
	}
	rel = fakeRelation{req.Artifact, req.Target, req.Type}
	status := 201
	if slices.Contains(s.relations, rel) {
		status = 200
	} else {
		s.relations = append(s.relations, rel)
	}
	writeJSON(w, status, map[string]any{"id": len(s.relations), "artifact": rel.Artifact, "target": rel.Target, "type": rel.Type})
}

func (s *fakeServer) createAsset(w http.ResponseWriter, r *http.Request, body []byte) {
	if wk, _ := s.worker(r); wk == nil {
		problem(w, 403, "You do not have permission to perform this action.", "")
		return
	}
	var req struct {
		Category    string          `json:"category"`
		Data        json.RawMessage `json:"data"`
		WorkRequest int64           `json:"work_request"`
		Workspace   string          `json:"workspace"`
	}
	var data struct {
		Purpose     string  `json:"purpose"`
		Fingerprint string  `json:"fingerprint"`
		PublicKey   string  `json:"public_key"`
		Description *string `json:"description"`
	}
	err := json.Unmarshal(body, &req)
	if err == nil {
		dec := json.NewDecoder(strings.NewReader(string(req.Data)))
		dec.DisallowUnknownFields()
		err = dec.Decode(&data)
	}
	if err != nil || req.Category != "debusine:signing-key" || (data.Purpose != "uefi" && data.Purpose != "openpgp") || data.Fingerprint == "" {
		problem(w, 400, "Cannot deserialize asset", fmt.Sprint(err))
		return
	}
	slug := data.Purpose + ":" + data.Fingerprint
	status := 201
	if s.assets[slug] != nil {
		status = 200
	}
	s.assets[slug] = req.Data
	writeJSON(w, status, map[string]any{"id": len(s.assets), "created_at": "2025-03-01T10:00:00Z", "category": req.Category,
		"scope": "debusine", "workspace": "System", "data": req.Data, "work_request": req.WorkRequest})
}

func (s *fakeServer) permission(w http.ResponseWriter, body []byte, m []string) {
	var req struct {
		ArtifactID    int64  `json:"artifact_id"`
		WorkRequestID int64  `json:"work_request_id"`
		Workspace     string `json:"workspace"`
	}
	json.Unmarshal(body, &req)
	s.permChecks = append(s.permChecks, fakePermissionCheck{Slug: m[2], Permission: m[3], ArtifactID: req.ArtifactID, WorkRequest: req.WorkRequestID, Workspace: req.Workspace})
	if m[1] != "debusine:signing-key" || s.assets[m[2]] == nil {
		problem(w, 404, "Asset matching query does not exist.", "")
		return
	}
	if m[3] != "sign_with" && m[3] != "edit" && m[3] != "manage_permissions" {
		problem(w, 400, "Error", fmt.Sprintf("Unknown permission '%s'", m[3]))
		return
	}
	var wr *fakeWorkRequest
	for _, x := range s.workReqs {
		if x.ID == req.WorkRequestID {
			wr = x
		}
	}
	a := s.artifacts[req.ArtifactID]
	if wr == nil || a == nil {
		problem(w, 400, "Error", "artifact or work request not found")
		return
	}
	var dyn struct {
		UnsignedIDs []int64 `json:"unsigned_ids"`
		UnsignedID  int64   `json:"unsigned_id"`
	}
	json.Unmarshal(wr.DynamicTaskData, &dyn)
	if !slices.Contains(dyn.UnsignedIDs, a.ID) && dyn.UnsignedID != a.ID {
		problem(w, 400, "Error", fmt.Sprintf("%d is not an input to %d", a.ID, wr.ID))
		return
	}
	if req.Workspace != wr.Workspace {
		problem(w, 400, "Error", "workspace does not match work request")
		return
	}
	var resource map[string]any
	switch a.Category {
	case "debusine:signing-input":
		var d struct {
			BinaryPackageName *string `json:"binary_package_name"`
		}
		json.Unmarshal(a.Data, &d)
		resource = map[string]any{"package": d.BinaryPackageName}
	case "debian:upload":
		resource = map[string]any{"architecture": "source", "source": "hello", "version": "1.0-1", "distribution": "unstable"}
	case "debian:repository-index":
		resource = map[string]any{"path": "Release"}
	default:
		problem(w, 400, "Error", "")
		return
	}
	writeJSON(w, 200, map[string]any{"has_permission": !s.denied[m[2]], "username": "alice", "user_id": wr.CreatedBy, "resource": resource})
}
