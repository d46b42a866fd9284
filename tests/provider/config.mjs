// Configuration of the WSO2-shaped test provider: defaults, merging, validation.
//
// CONFIG.json:
//   {
//     "tenants": {
//       "carbon.super": {"users": [...], "clients": [...]},
//       "acme.com": {...}
//     },
//     "ttl": {"AccessToken": 3600, "AuthorizationCode": 300, "RefreshToken": 86400,
//             "IdToken": 3600, "Session": 86400, "Interaction": 3600, "Grant": 1209600},
//     "consent_page": false,      // true: show a consent page after login (WSO2 can)
//     "logout_consent": false,    // true: ask "Do you want to sign out?" at /oidc/logout
//     "trusted_ca_files": []      // extra CA bundles trusted when POSTing back-channel logouts
//   }
//
// A tenant may misbehave on purpose (the gateway's security tests), with
//   "misbehave": {
//     "refresh_id_token": "other_sub" | "garbage",  // a refresh answers with an ID token
//                                   // validly signed but about "mallory", or "not.a.jwt"
//     "jwks_uri": "http",           // discovery advertises http://.../oauth2/jwks
//     "expires_in": "1e400"         // raw JSON text put in every token response's expires_in
//   }
// A tenant's "api_scopes": ["orders:read", ...] are scopes of its API resources,
// grantable besides the OIDC ones (client_credentials: "scope=orders:read"). A client's
// "access_token_audiences": ["orders"] are added to its JWT access tokens' aud (WSO2's
// per-application audiences), and "grant_types" may list "client_credentials".
// Without it (the default) the tenant behaves exactly as before.
//
// A tenant's "profile" shapes it like another kind of provider, from the same code
// (the gateway's interop matrix, tests/e2e/test_provider_matrix.py):
//   "wso2" (the default): everything above.
//   "generic": an independent provider with its default settings: scope claims in
//     userinfo only (not in the ID token), no sid, no org claims, front-channel
//     logout advertised and back-channel not, client_secret_post only, access
//     tokens of at most 60 s, rotating refresh tokens.
//   "strict": PKCE required, private_key_jwt only (a client gives its public "jwks"),
//     PAR required, authorization codes of at most 10 s.
// Step-up: a login asked for acr_values including "mfa" gets acr "mfa" (amr adds
// "TOTP"), else "pwd"; a user with "mfa": false always gets "pwd". Such a
// request also brings the login page back when the provider session's acr is
// not one asked for (max_age does the same for an old login, as oidc-provider does).
// WSO2 IS 7 organizations: a tenant's "organizations": {"<org-id>": {"name": "Customer A",
// "users": [...], "clients": [...]}} become tenants of their own, named
// "<root>/o/<org-id>", served under /t/<root>/o/<org-id>/ with their own issuer
// (.../o/<org-id>/oauth2/token), keys and users; their tokens carry org_id = the id
// and org_name = "name".
// The default tenants (carbon.super, acme.com) always exist; a tenant given in the
// config replaces the default users only when it lists "users".

import * as crypto from 'node:crypto';

export const SUPER_TENANT = 'carbon.super';
export const PROFILES = ['wso2', 'generic', 'strict'];
// WSO2 IS 7's fixed organization id of the super tenant.
export const SUPER_ORG_ID = '10084a8d-113f-4211-a0d5-efe36b082211';

export const DEFAULT_TTL = {
  AuthorizationCode: 300,
  AccessToken: 3600,
  RefreshToken: 86400,
  IdToken: 3600,
  Session: 86400,
  Interaction: 3600,
  Grant: 14 * 86400,
};

// A stable UUID derived from text, so default users keep their `sub` across runs.
export function stableUuid(text) {
  const hex = crypto.createHash('sha256').update(text).digest('hex');
  const variant = ((parseInt(hex[16], 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

function defaultUser(tenant, username, password, extra) {
  return {
    username,
    password,
    sub: stableUuid(`idgateway-test-provider:${tenant}:${username}`),
    email_verified: true,
    roles: [],
    ...extra,
  };
}

export function defaultTenants() {
  return {
    [SUPER_TENANT]: {
      users: [
        defaultUser(SUPER_TENANT, 'alice', 'alice123', {
          email: 'alice@example.com',
          groups: ['engineering'],
          roles: ['admin'],
          given_name: 'Alice',
          family_name: 'Anderson',
        }),
        defaultUser(SUPER_TENANT, 'bob', 'bob123', {
          email: 'bob@other.org',
          groups: ['sales'],
          roles: ['everyone'],
          given_name: 'Bob',
          family_name: 'Brown',
        }),
      ],
      clients: [],
    },
    'acme.com': {
      users: [
        defaultUser('acme.com', 'carol', 'carol123', {
          email: 'carol@acme.com',
          groups: ['acme-staff'],
          roles: ['everyone'],
          given_name: 'Carol',
          family_name: 'Clark',
        }),
      ],
      clients: [],
    },
  };
}

function fail(message) {
  throw new Error(`invalid provider configuration: ${message}`);
}

function normalizeUser(tenant, user, index) {
  if (!user || typeof user.username !== 'string' || !user.username) {
    fail(`tenants.${tenant}.users[${index}] needs a username`);
  }
  if (typeof user.password !== 'string') {
    fail(`tenants.${tenant}.users[${index}] needs a password`);
  }
  return {
    sub: stableUuid(`idgateway-test-provider:${tenant}:${user.username}`),
    groups: [],
    roles: [],
    ...user,
  };
}

function normalizeClient(tenant, client, index) {
  const where = `tenants.${tenant}.clients[${index}]`;
  if (!client || typeof client.client_id !== 'string' || !client.client_id) {
    fail(`${where} needs a client_id`);
  }
  if (!Array.isArray(client.redirect_uris) || client.redirect_uris.length === 0) {
    fail(`${where} needs redirect_uris`);
  }
  const method = client.token_endpoint_auth_method || 'client_secret_basic';
  if (!['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'].includes(method)) {
    fail(`${where}.token_endpoint_auth_method ${method} is not supported`);
  }
  if (method === 'private_key_jwt') {
    if (!client.jwks || !Array.isArray(client.jwks.keys)) {
      fail(`${where} needs jwks: {keys: [...]} for private_key_jwt`);
    }
  } else if (method !== 'none' && typeof client.client_secret !== 'string') {
    fail(`${where} needs a client_secret`);
  }
  if (client.pkce_required !== undefined && typeof client.pkce_required !== 'boolean') {
    fail(`${where}.pkce_required must be true or false`);
  }
  if (client.access_token_audiences !== undefined
    && (!Array.isArray(client.access_token_audiences)
      || !client.access_token_audiences.every((a) => typeof a === 'string'))) {
    fail(`${where}.access_token_audiences must be a list of strings`);
  }
  const format = client.access_token_format || 'opaque';
  if (!['opaque', 'jwt'].includes(format)) {
    fail(`${where}.access_token_format must be "opaque" or "jwt"`);
  }
  return {
    ...client,
    token_endpoint_auth_method: method,
    access_token_format: format,
  };
}

const MISBEHAVIOURS = {
  refresh_id_token: (v) => ['other_sub', 'garbage'].includes(v),
  jwks_uri: (v) => v === 'http',
  expires_in: (v) => typeof v === 'string' && v.length > 0,
};

function normalizeMisbehave(tenant, misbehave) {
  if (misbehave === undefined) return {};
  if (!misbehave || typeof misbehave !== 'object') fail(`tenants.${tenant}.misbehave must be an object`);
  for (const [key, value] of Object.entries(misbehave)) {
    if (!(key in MISBEHAVIOURS)) {
      fail(`tenants.${tenant}.misbehave.${key} is not one of ${Object.keys(MISBEHAVIOURS).join(', ')}`);
    }
    if (!MISBEHAVIOURS[key](value)) {
      fail(`tenants.${tenant}.misbehave.${key}: ${JSON.stringify(value)} is not allowed`);
    }
  }
  return { ...misbehave };
}

export function loadConfig(raw) {
  const input = raw ?? {};
  const tenants = defaultTenants();
  for (const [name, tenant] of Object.entries(input.tenants ?? {})) {
    if (!/^[A-Za-z0-9.-]+$/.test(name)) {
      fail(`tenant name ${JSON.stringify(name)} is not a domain name`);
    }
    const base = tenants[name] ?? { users: [], clients: [] };
    tenants[name] = {
      ...base,
      ...tenant,
      users: tenant.users ?? base.users,
      clients: tenant.clients ?? base.clients,
    };
  }
  for (const [root, tenant] of Object.entries(tenants)) {
    for (const [id, org] of Object.entries(tenant.organizations ?? {})) {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(id)) fail(`tenants.${root}.organizations: bad id ${id}`);
      tenants[`${root}/o/${id}`] = {
        users: [],
        clients: [],
        ...org,
        orgId: id,
        orgName: org.name ?? id,
        orgHandle: org.handle ?? id,
      };
    }
    delete tenant.organizations;
  }
  for (const [name, tenant] of Object.entries(tenants)) {
    tenant.profile = tenant.profile ?? 'wso2';
    if (!PROFILES.includes(tenant.profile)) {
      fail(`tenants.${name}.profile must be one of ${PROFILES.join(', ')}`);
    }
    tenant.misbehave = normalizeMisbehave(name, tenant.misbehave);
    tenant.users = tenant.users.map((user, i) => normalizeUser(name, user, i));
    tenant.clients = tenant.clients.map((client, i) => normalizeClient(name, client, i));
  }
  const ttl = { ...DEFAULT_TTL };
  for (const [key, value] of Object.entries(input.ttl ?? {})) {
    if (!(key in DEFAULT_TTL)) {
      fail(`ttl.${key} is not one of ${Object.keys(DEFAULT_TTL).join(', ')}`);
    }
    if (!Number.isInteger(value) || value <= 0) {
      fail(`ttl.${key} must be a positive integer (seconds)`);
    }
    ttl[key] = value;
  }
  return {
    tenants,
    ttl,
    consentPage: input.consent_page === true,
    logoutConsent: input.logout_consent === true,
    trustedCaFiles: input.trusted_ca_files ?? [],
  };
}
