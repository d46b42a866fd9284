#!/usr/bin/env node
// A WSO2 Identity Server shaped OpenID provider for idgateway's tests, built on
// the certified `oidc-provider` package. See /work/shared/WSO2.md (the project's
// notes on WSO2) for the behaviour reproduced here.
//
//   node tests/provider/server.mjs --port 0 --ready-file PATH \
//        --cert CERT.pem --key KEY.pem [--config CONFIG.json]
//
// Listens on 127.0.0.1 (HTTPS) and calls itself https://localhost:PORT, like
// WSO2's https://localhost:9443. When ready it writes (atomically) to the ready
// file: {"port": N, "base_url": "https://localhost:N", "tenants": {...}}.
//
// Paths (each also under /t/<tenant>/ for tenants other than carbon.super):
//   /oauth2/oidcdiscovery/.well-known/openid-configuration
//   /oauth2/token/.well-known/openid-configuration
//   /oauth2/authorize /oauth2/token /oauth2/userinfo /oauth2/jwks
//   /oauth2/introspect /oauth2/revoke /oauth2/par /oidc/logout /oidc/checksession
//   /authenticationendpoint/login.do?sessionDataKey=...   (login form)
//   /authenticationendpoint/oauth2_consent.do?sessionDataKey=...  (consent_page only)
//   /commonauth                                           (form POST target)
// Test admin API (not WSO2):
//   POST /_test/logout?tenant=carbon.super&username=alice  end that user's sessions
//   GET  /_test/sessions?tenant=carbon.super                list provider sessions
//   POST /_test/logout_token?tenant=&client_id=&username=|sub=&sid=&kid=  a signed logout token
//   POST /_test/rotate_keys?tenant=carbon.super[&drop_old=1] new signing key (kid);
//        the old key stays in the JWKS (listed second) unless drop_old=1
//   POST /_test/sign?tenant=  {"claims": {...}, "header": {...}}  any claims signed with
//        the tenant's key ("now+60" -> epoch seconds); iss defaults to the tenant's
//   POST /_test/introspection?tenant=&mode=normal|inactive|500|garbage|slow  what
//        /oauth2/introspect answers from now on

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { parseArgs } from 'node:util';

import { loadConfig, SUPER_TENANT } from './config.mjs';
import {
  checkSessionPage, consentPage, loginPage, messagePage,
} from './pages.mjs';
import { Tenant } from './tenant.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'public-host': { type: 'string', default: 'localhost' },
    'ready-file': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    config: { type: 'string' },
    quiet: { type: 'boolean', default: false },
  },
  strict: true,
});

if (!args.cert || !args.key) {
  process.stderr.write('usage: server.mjs --cert CERT.pem --key KEY.pem [--port 0] [--ready-file PATH] [--config CONFIG.json]\n');
  process.exit(2);
}

// --quiet drops the access log only; errors, logins and logouts are still logged.
function log(message, { access = false } = {}) {
  if (!(access && args.quiet)) {
    process.stdout.write(`[provider ${new Date().toISOString()}] ${message}\n`);
  }
}

const settings = loadConfig(args.config ? JSON.parse(fs.readFileSync(args.config, 'utf8')) : undefined);
const trustedCAs = [
  ...tls.rootCertificates,
  ...settings.trustedCaFiles.map((file) => fs.readFileSync(file, 'utf8')),
];

// ---- outgoing requests (back-channel logout) ----
//
// oidc-provider's own fetch refuses loopback addresses (SSRF protection); the
// applications under test live on 127.0.0.1, often as *.localhost names, which
// are sent to 127.0.0.1 here. HTTPS is verified against the system CAs plus
// trusted_ca_files.
function loopbackName(hostname) {
  return hostname === 'localhost' || hostname.endsWith('.localhost');
}

function outgoingFetch(url, options = {}) {
  const target = new URL(url);
  const isHttps = target.protocol === 'https:';
  const bare = target.hostname.replace(/^\[|\]$/g, '');
  const connectHost = loopbackName(bare) ? '127.0.0.1' : bare;
  const headers = Object.fromEntries(new Headers(options.headers ?? {}).entries());
  const body = options.body === undefined ? undefined : Buffer.from(String(options.body));
  headers.host = target.host;
  if (body) headers['content-length'] = String(body.length);
  delete headers['user-agent'];
  return new Promise((resolve, reject) => {
    const request = (isHttps ? https : http).request({
      host: connectHost,
      port: target.port || (isHttps ? 443 : 80),
      path: `${target.pathname}${target.search}`,
      method: options.method ?? 'GET',
      headers,
      signal: options.signal,
      ...(isHttps ? {
        ca: trustedCAs,
        servername: /^[\d.]+$|:/.test(bare) ? undefined : bare,
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity(bare, cert),
      } : {}),
    }, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: response.statusCode,
          ok: response.statusCode >= 200 && response.statusCode < 300,
          headers: new Headers(Object.entries(response.headers).flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, String(v)]]))),
          text: async () => text,
          json: async () => JSON.parse(text),
        });
      });
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

// ---- helpers ----

function send(res, status, body, type = 'text/html; charset=utf-8', extraHeaders = {}) {
  const payload = Buffer.from(body);
  res.writeHead(status, {
    'content-type': type,
    'content-length': String(payload.length),
    'cache-control': 'no-store',
    ...extraHeaders,
  });
  res.end(payload);
}

function sendJson(res, status, value) {
  send(res, status, `${JSON.stringify(value)}\n`, 'application/json');
}

function redirect(res, location, extraHeaders = {}) {
  res.writeHead(302, {
    location, 'content-length': '0', 'cache-control': 'no-store', ...extraHeaders,
  });
  res.end();
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const epochTime = () => Math.floor(Date.now() / 1000);

// ---- the login and consent pages (WSO2's authenticationendpoint) ----

async function findInteraction(tenant, uid) {
  if (!uid) return undefined;
  const interaction = await tenant.provider.Interaction.find(uid);
  return interaction && !interaction.result ? interaction : undefined;
}

function expiredPage(res) {
  const { status, html } = messagePage(
    'Session expired',
    'The login request is unknown or has expired. Start again from the application.',
    400,
  );
  send(res, status, html);
}

async function showLogin(tenant, url, res) {
  const uid = url.searchParams.get('sessionDataKey');
  const interaction = await findInteraction(tenant, uid);
  if (!interaction) return expiredPage(res);
  if (interaction.prompt.name === 'consent') {
    return redirect(res, `/authenticationendpoint/oauth2_consent.do?${url.searchParams}`);
  }
  const failed = url.searchParams.get('authFailure') === 'true';
  return send(res, 200, loginPage({
    sessionDataKey: uid,
    tenantDomain: tenant.name,
    clientId: interaction.params.client_id,
    username: failed ? url.searchParams.get('username') ?? '' : '',
    error: failed ? 'Login failed! Please recheck the username and password and try again.' : undefined,
  }));
}

async function showConsent(tenant, url, res) {
  const uid = url.searchParams.get('sessionDataKey');
  const interaction = await findInteraction(tenant, uid);
  if (!interaction) return expiredPage(res);
  const details = interaction.prompt.details ?? {};
  return send(res, 200, consentPage({
    sessionDataKey: uid,
    tenantDomain: tenant.name,
    clientId: interaction.params.client_id,
    scopes: details.missingOIDCScope ?? [],
    claims: details.missingOIDCClaims ?? [],
  }));
}

async function finishInteraction(tenant, interaction, result, res, extraHeaders = {}) {
  interaction.result = { ...interaction.lastSubmission, ...result };
  await interaction.save(Math.max(interaction.exp - epochTime(), 1));
  redirect(res, interaction.returnTo, extraHeaders);
}

async function commonAuth(tenantFromPath, req, res) {
  const form = await readForm(req);
  const tenant = tenants.get(form.get('tenantDomain') || tenantFromPath?.name || SUPER_TENANT);
  if (!tenant) return send(res, 404, messagePage('Unknown tenant', 'No such tenant.', 404).html);
  const uid = form.get('sessionDataKey');
  const interaction = await findInteraction(tenant, uid);
  if (!interaction) return expiredPage(res);

  if (form.has('consent')) {
    if (interaction.prompt.name !== 'consent') return expiredPage(res);
    if (form.get('consent') !== 'approve') {
      return finishInteraction(tenant, interaction, {
        error: 'access_denied', error_description: 'User denied the consent',
      }, res);
    }
    const { provider } = tenant;
    const details = interaction.prompt.details ?? {};
    let grant = interaction.grantId ? await provider.Grant.find(interaction.grantId) : undefined;
    grant ||= new provider.Grant({
      accountId: interaction.session.accountId,
      clientId: interaction.params.client_id,
    });
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    const grantId = await grant.save();
    return finishInteraction(tenant, interaction, { consent: { grantId } }, res);
  }

  const username = form.get('username') ?? '';
  const user = tenant.userByName(username);
  if (!user || user.password !== form.get('password')) {
    log(`login failed for ${JSON.stringify(username)} in ${tenant.name}`);
    const params = new URLSearchParams({
      sessionDataKey: uid,
      client_id: interaction.params.client_id ?? '',
      tenantDomain: tenant.name,
      authFailure: 'true',
      authFailureMsg: 'login.fail.message',
      username,
    });
    return redirect(res, `/authenticationendpoint/login.do?${params}`);
  }
  log(`login ${user.username}@${tenant.name} for client ${interaction.params.client_id}`);
  // WSO2 sets opbs (the OP browser state of OIDC Session Management), readable by JS.
  const opbs = `opbs=${crypto.randomUUID()}; Path=/; Secure; SameSite=None`;
  const wanted = (interaction.params.acr_values ?? '').split(' ').filter(Boolean);
  const mfa = wanted.includes('mfa') && user.mfa !== false;
  return finishInteraction(tenant, interaction, {
    login: {
      accountId: user.sub,
      acr: mfa ? 'mfa' : 'pwd',
      amr: mfa ? ['BasicAuthenticator', 'TOTP'] : ['BasicAuthenticator'],
      remember: true,
    },
  }, res, { 'set-cookie': opbs });
}

// ---- test admin API ----

async function admin(req, res, url) {
  const tenant = tenants.get(url.searchParams.get('tenant') || SUPER_TENANT);
  if (!tenant) return sendJson(res, 404, { error: 'unknown tenant' });
  if (url.pathname === '/_test/sessions' && req.method === 'GET') {
    return sendJson(res, 200, { tenant: tenant.name, sessions: tenant.sessions() });
  }
  if (url.pathname === '/_test/logout' && req.method === 'POST') {
    const username = url.searchParams.get('username');
    if (!username) return sendJson(res, 400, { error: 'username is required' });
    try {
      return sendJson(res, 200, await tenant.logoutUser(username));
    } catch (err) {
      return sendJson(res, 404, { error: err.message });
    }
  }
  if (url.pathname === '/_test/logout_token' && req.method === 'POST') {
    // ?client_id=&username= (its sub) | &sub=, &sid=, &kid= (default: the signing key's)
    const username = url.searchParams.get('username');
    const user = username ? tenant.userByName(username) : undefined;
    if (username && !user) return sendJson(res, 404, { error: `no user ${username}` });
    return sendJson(res, 200, {
      logout_token: tenant.logoutToken(url.searchParams.get('client_id'), {
        sub: user?.sub ?? url.searchParams.get('sub') ?? undefined,
        sid: url.searchParams.get('sid') ?? undefined,
        kid: url.searchParams.get('kid') ?? undefined,
      }),
    });
  }
  if (url.pathname === '/_test/rotate_keys' && req.method === 'POST') {
    const rotated = buildTenant(tenant.name, tenant, url.searchParams.get('drop_old') === '1');
    log(`rotated the signing key of ${tenant.name}: ${tenant.key.kidRS256} -> ${rotated.key.kidRS256}`);
    return sendJson(res, 200, {
      tenant: tenant.name,
      kid: rotated.key.kidRS256,
      previous_kid: tenant.key.kidRS256,
      published: [rotated.key, ...rotated.oldKeys].map((k) => k.kidRS256),
    });
  }
  if (url.pathname === '/_test/sign' && req.method === 'POST') {
    // Body: {"claims": {...}, "header": {...}}; "now+N"/"now-N" strings in
    // claims become epoch seconds. Signed with the tenant's key.
    const body = JSON.parse((await readBody(req)) || '{}');
    const now = Math.floor(Date.now() / 1000);
    const claims = Object.fromEntries(Object.entries(body.claims ?? {}).map(([k, v]) => {
      const m = typeof v === 'string' ? /^now([+-]\d+)?$/.exec(v) : null;
      return [k, m ? now + Number(m[1] ?? 0) : v];
    }));
    return sendJson(res, 200, { token: tenant.sign({ iss: tenant.issuer, ...claims }, body.header ?? {}) });
  }
  if (url.pathname === '/_test/introspection' && req.method === 'POST') {
    const mode = url.searchParams.get('mode') || 'normal';
    if (!['normal', 'inactive', '500', 'garbage', 'slow'].includes(mode)) {
      return sendJson(res, 400, { error: `unknown mode ${mode}` });
    }
    tenant.introspectionFault = mode === 'normal' ? undefined : mode;
    return sendJson(res, 200, { tenant: tenant.name, mode });
  }
  return sendJson(res, 404, { error: 'unknown admin endpoint' });
}

// ---- dispatch ----

const DISCOVERY_PATHS = new Set([
  '/oauth2/oidcdiscovery/.well-known/openid-configuration',
  '/oauth2/token/.well-known/openid-configuration',
]);

const tenants = new Map();
let publicHostPort = '';
let publicOriginUrl = '';

// (Re)build a tenant's provider; `previous` hands over storage and cookie keys.
function buildTenant(name, previous, dropOldKey = false) {
  const tenant = new Tenant({
    name,
    publicOrigin: publicOriginUrl,
    settings: { ...settings, ...settings.tenants[name] },
    fetch: outgoingFetch,
    log,
    previous,
    dropOldKey,
  });
  tenant.callback = tenant.provider.callback();
  tenants.set(name, tenant);
  return tenant;
}

async function dispatch(req, res) {
  // WSO2 builds its URLs from its configured host name, whatever Host was sent.
  req.headers.host = publicHostPort;
  const url = new URL(req.url, `https://${publicHostPort}`);
  let rest = url.pathname;

  if (rest.startsWith('/_test/')) return admin(req, res, url);

  let tenant = tenants.get(SUPER_TENANT);
  let prefix = '';
  const match = /^\/t\/([^/]+)(\/.*)?$/.exec(rest);
  if (match) {
    tenant = tenants.get(match[1]);
    rest = match[2] ?? '/';
    // WSO2 IS 7 organizations: /t/<root>/o/<org-id>/...
    const org = /^\/o\/([^/]+)(\/.*)?$/.exec(rest);
    if (org) {
      tenant = tenants.get(`${match[1]}/o/${org[1]}`);
      rest = org[2] ?? '/';
    }
    if (!tenant) return send(res, 404, messagePage('Unknown tenant', `No tenant ${match[1]}.`, 404).html);
    prefix = tenant.prefix;
  }

  if (rest === '/authenticationendpoint/login.do' || rest === '/authenticationendpoint/oauth2_consent.do') {
    if (!match && url.searchParams.get('tenantDomain')) {
      tenant = tenants.get(url.searchParams.get('tenantDomain'));
      if (!tenant) return expiredPage(res);
    }
    return rest.endsWith('login.do') ? showLogin(tenant, url, res) : showConsent(tenant, url, res);
  }
  if (rest === '/commonauth' && req.method === 'POST') {
    return commonAuth(match ? tenant : undefined, req, res);
  }
  if (rest === '/oidc/checksession') {
    return send(res, 200, checkSessionPage());
  }

  let providerPath;
  if (DISCOVERY_PATHS.has(rest)) {
    providerPath = '/.well-known/openid-configuration';
  } else if (rest.startsWith('/oauth2/') || rest === '/oidc/logout' || rest.startsWith('/oidc/logout/')) {
    providerPath = rest;
  } else {
    return send(res, 404, messagePage('Not found', `Nothing at ${url.pathname}.`, 404).html);
  }
  // oidc-provider derives its endpoint URLs from originalUrl minus url: the
  // tenant prefix ("" or /t/<tenant>) stays the mount path.
  req.url = `${providerPath}${url.search}`;
  req.originalUrl = `${prefix}${req.url}`;
  return tenant.callback(req, res);
}

const server = https.createServer({
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
}, (req, res) => {
  const started = Date.now();
  const original = req.url;
  res.on('finish', () => {
    log(`${req.method} ${original} -> ${res.statusCode} (${Date.now() - started} ms)`, { access: true });
  });
  dispatch(req, res).catch((err) => {
    log(`internal error on ${req.method} ${original}: ${err.stack ?? err}`);
    if (!res.headersSent) {
      send(res, 500, messagePage('Server error', 'Something went wrong.', 500).html);
    } else {
      res.destroy();
    }
  });
});

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  publicHostPort = `${args['public-host']}:${port}`;
  const publicOrigin = `https://${publicHostPort}`;
  publicOriginUrl = publicOrigin;
  const ready = { port, base_url: publicOrigin, tenants: {} };
  for (const name of Object.keys(settings.tenants)) {
    const tenant = buildTenant(name);
    ready.tenants[name] = {
      issuer: tenant.issuer,
      base: tenant.base,
      org_id: tenant.orgId,
      kid: tenant.key.kidRS256,
      users: tenant.users.map((u) => ({ username: u.username, sub: u.sub })),
      clients: [...tenant.clients.keys()],
    };
  }
  log(`listening on https://${args.host}:${port} as ${publicOrigin} (tenants: ${[...tenants.keys()].join(', ')})`);
  if (args['ready-file']) {
    const file = path.resolve(args['ready-file']);
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(ready, null, 2));
    fs.renameSync(tmp, file);
  }
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
