// HTML pages of the WSO2-shaped test provider: plain, stable and easy to drive
// from Playwright (input[name=username], input[name=password], button[type=submit]).

export function escapeHtml(value) {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>
body{font-family:sans-serif;background:#f5f5f5;margin:2em}
main{max-width:22em;margin:auto;background:#fff;padding:1.5em;border:1px solid #ddd}
label{display:block;margin-top:.8em}
input{width:100%;box-sizing:border-box;padding:.4em}
button{margin-top:1em;padding:.5em 1.2em}
.error{color:#b00020}
</style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>
`;
}

function hidden(fields) {
  return Object.entries(fields)
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([name, value]) => `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`)
    .join('\n');
}

export function loginPage({
  sessionDataKey, tenantDomain, clientId, error, username,
}) {
  const message = error
    ? `<p class="error" id="error-msg" role="alert">${escapeHtml(error)}</p>`
    : '';
  return page('WSO2 Identity Server - Sign In', `<h1>Sign In</h1>
<p id="app-name">to continue to ${escapeHtml(clientId)} (${escapeHtml(tenantDomain)})</p>
${message}
<form id="loginForm" method="post" action="/commonauth">
${hidden({ sessionDataKey, tenantDomain })}
<label for="usernameUserInput">Username</label>
<input id="usernameUserInput" type="text" name="username" autocomplete="username" value="${escapeHtml(username)}" autofocus>
<label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="current-password">
<button id="login-submit" type="submit">Sign In</button>
</form>`);
}

export function consentPage({
  sessionDataKey, tenantDomain, clientId, scopes, claims,
}) {
  const items = [...scopes, ...claims].map((s) => `<li>${escapeHtml(s)}</li>`).join('');
  return page('WSO2 Identity Server - Consent', `<h1>Consent</h1>
<p id="app-name">${escapeHtml(clientId)} requests access to your profile:</p>
<ul id="consent-items">${items}</ul>
<form id="consentForm" method="post" action="/commonauth">
${hidden({ sessionDataKey, tenantDomain, consent: 'approve' })}
<button id="approve" type="submit">Allow</button>
</form>
<form id="denyForm" method="post" action="/commonauth">
${hidden({ sessionDataKey, tenantDomain, consent: 'deny' })}
<button id="deny" type="submit" form="denyForm" formnovalidate>Deny</button>
</form>`);
}

export function messagePage(title, text, status = 200) {
  return { status, html: page(title, `<h1>${escapeHtml(title)}</h1>\n<p id="message">${escapeHtml(text)}</p>`) };
}

export function logoutConsentPage(host, form) {
  return page('WSO2 Identity Server - Logout', `<h1>Do you want to sign out from ${escapeHtml(host)}?</h1>
${form}
<button id="logout-approve" autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes</button>
<button id="logout-deny" type="submit" form="op.logoutForm">No</button>`);
}

// OpenID Connect Session Management's OP iframe: answers "unchanged" while the
// provider session cookie is present, "changed" otherwise. Good enough for tests.
export function checkSessionPage() {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>OIDC Check Session</title></head>
<body><script>
window.addEventListener('message', function (e) {
  if (typeof e.data !== 'string') return;
  var parts = e.data.split(' ');
  var answer = document.cookie.indexOf('opbs=') === -1 ? 'changed' : 'unchanged';
  if (parts.length !== 2) answer = 'error';
  e.source.postMessage(answer, e.origin);
}, false);
</script></body></html>
`;
}
