// XDiffusion web app: send a chosen file to the session over HTTP (not the websocket), then ask
// the session to load it. Files over the limit are refused here without sending a byte; the
// server checks the limit again while it receives.
window.xdiffusionUpload = async function xdiffusionUpload(input, maxBytes) {
  const file = input && input.files && input.files[0];
  if (!file) {
    return;
  }
  input.value = "";
  const limitMB = Math.round(maxBytes / 1048576);
  if (file.size > maxBytes) {
    const sizeMB = (file.size / 1048576).toFixed(1);
    await window.trame.trigger("xd_upload_failed", [
      `${file.name}: the file is larger than the upload limit of ${limitMB} MB (${sizeMB} MB); ` +
        "start the app with a larger --max-upload-mb, or load it from a path on the server",
    ]);
    return;
  }
  await window.trame.trigger("xd_upload_started", [file.name, file.size]);
  let answer = null;
  try {
    const response = await fetch(`upload?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    });
    answer = await response.json().catch(() => ({
      ok: false,
      error: `${file.name}: the server answered ${response.status} ${response.statusText}`,
    }));
  } catch (error) {
    answer = { ok: false, error: `${file.name}: the upload failed (${error})` };
  }
  if (answer.ok) {
    await window.trame.trigger("xd_load_upload", [answer.token, answer.name]);
  } else {
    await window.trame.trigger("xd_upload_failed", [answer.error]);
  }
};
