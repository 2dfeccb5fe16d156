// XDiffusion web app: send a chosen file to the session over HTTP (not the websocket), showing the
// percentage sent, then ask the session to load it. Files over the limit are refused here without
// sending a byte; the server checks the limit again while it receives. The session's triggers are
// named on the file input (data-trigger-started, -progress, -failed, -load: the names trame gave them).
function xdiffusionPost(url, file, onProgress) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        onProgress(Math.floor((100 * event.loaded) / event.total));
      }
    };
    request.onload = () => {
      let answer = null;
      try {
        answer = JSON.parse(request.responseText);
      } catch (error) {
        answer = { ok: false, error: `${file.name}: the server answered ${request.status} ${request.statusText}` };
      }
      resolve(answer);
    };
    request.onerror = () => resolve({ ok: false, error: `${file.name}: the upload failed (network error)` });
    request.send(file);
  });
}

window.xdiffusionUpload = async function xdiffusionUpload(input, maxBytes) {
  const file = input && input.files && input.files[0];
  if (!file) {
    return;
  }
  input.value = "";
  const triggers = input.dataset;
  const limitMB = Math.round(maxBytes / 1048576);
  if (file.size > maxBytes) {
    const sizeMB = (file.size / 1048576).toFixed(1);
    await window.trame.trigger(triggers.triggerFailed, [
      `${file.name}: the file is larger than the upload limit of ${limitMB} MB (${sizeMB} MB); ` +
        "start the app with a larger --max-upload-mb, or load it from a path on the server",
    ]);
    return;
  }
  await window.trame.trigger(triggers.triggerStarted, [file.name, file.size]);
  // At most a few progress messages a second reach the server.
  let last = -1;
  let sentAt = 0;
  const answer = await xdiffusionPost(`upload?name=${encodeURIComponent(file.name)}`, file, (percent) => {
    const now = Date.now();
    if (percent !== last && (now - sentAt > 200 || percent === 100)) {
      last = percent;
      sentAt = now;
      window.trame.trigger(triggers.triggerProgress, [percent]);
    }
  });
  if (answer.ok) {
    await window.trame.trigger(triggers.triggerLoad, [answer.token, answer.name]);
  } else {
    await window.trame.trigger(triggers.triggerFailed, [answer.error]);
  }
};

// Export in one click: the session answers the Export trigger with the file's address, and the
// browser downloads it at once.
window.xdiffusionDownload = function xdiffusionDownload(answer) {
  if (!answer || !answer.url) {
    return;
  }
  const link = document.createElement("a");
  link.href = answer.url;
  link.download = answer.name || "";
  link.style.display = "none";
  document.body.appendChild(link);
  link.click();
  link.remove();
};
