// One WSO2 tenant = one oidc-provider instance with WSO2's paths, issuer, keys,
// claims and quirks. server.mjs mounts every tenant under one HTTPS server.

import * as crypto from 'node:crypto';

import Provider, { errors, interactionPolicy } from 'oidc-provider';
// Deep import of the RP-initiated logout actions (same module instance the
// provider uses) so the logout confirmation page can be skipped, like WSO2 with
// logout consent off.
import * as endSession from 'oidc-provider/lib/actions/end_session.js';
import introspectionStack from 'oidc-provider/lib/actions/introspection.js';
import revocationStack from 'oidc-provider/lib/actions/revocation.js';
import rejectStructuredTokens from 'oidc-provider/lib/shared/reject_structured_tokens.js';

import { TenantStore } from './adapter.mjs';
import { SUPER_ORG_ID, SUPER_TENANT, stableUuid } from './config.mjs';
import { logoutConsentPage, messagePage } from './pages.mjs';

const epochTime = () => Math.floor(Date.now() / 1000);
const sha256hex = (text) => crypto.createHash('sha256').update(text).digest('hex');
const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

// The stock last step of GET/POST /oidc/logout renders "Do you want to sign out?".
// Replace it (once, before any Provider is built) with one that, unless the
// tenant asks for the page, confirms at once: ends the session, sends the
// back-channel logouts and redirects to post_logout_redirect_uri.
const stockRenderLogout = endSession.init[endSession.init.length - 1];
const confirmLogout = endSession.confirm[endSession.confirm.length - 1];
const logoutConsentWanted = new WeakMap();
if (stockRenderLogout.name !== 'wso2RenderLogout') {
  endSession.init[endSession.init.length - 1] = async function wso2RenderLogout(ctx, next) {
    if (logoutConsentWanted.get(ctx.oidc.provider)) {
      return stockRenderLogout(ctx, next);
    }
    const { state } = ctx.oidc.session;
    state.clientId = ctx.oidc.client ? ctx.oidc.client.clientId : undefined;
    state.state = ctx.oidc.params.state;
    state.postLogoutRedirectUri = ctx.oidc.params.post_logout_redirect_uri;
    ctx.oidc.params.logout = 'yes';
    return confirmLogout(ctx, next);
  };
}

// oidc-provider refuses JWTs at introspection and revocation (its JWT access
// tokens are not stored). Ours stand for a stored token (their jti): swap such a
// JWT for that id first; anything else still goes through the stock check.
const tenantsByProvider = new WeakMap();
async function acceptOurJwtAccessTokens(ctx, next) {
  const tenant = tenantsByProvider.get(ctx.oidc.provider);
  if (tenant && typeof ctx.oidc.params.token === 'string') {
    ctx.oidc.params.token = tenant.accessTokenId(ctx.oidc.params.token);
  }
  return rejectStructuredTokens(ctx, next);
}
for (const stack of [introspectionStack, revocationStack]) {
  const i = stack.indexOf(rejectStructuredTokens);
  if (i !== -1) stack[i] = acceptOurJwtAccessTokens;
}

function makeSigningKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  // WSO2: kid = base64url(hex(SHA-256(certificate DER))) + "_RS256". There is no
  // certificate here, so the public key's DER stands in for it.
  const der = publicKey.export({ type: 'spki', format: 'der' });
  const kidBase = Buffer.from(sha256hex(der)).toString('base64url');
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    privateKey,
    publicKey,
    kidRS256: `${kidBase}_RS256`,
    kidPS256: `${kidBase}_PS256`,
    jwks: {
      keys: [
        { ...jwk, kid: `${kidBase}_RS256`, alg: 'RS256', use: 'sig' },
        { ...jwk, kid: `${kidBase}_PS256`, alg: 'PS256', use: 'sig' },
      ],
    },
  };
}

function signRS256(payload, header, key) {
  const input = `${b64url(header)}.${b64url(payload)}`;
  const signature = crypto.sign('sha256', Buffer.from(input), key).toString('base64url');
  return `${input}.${signature}`;
}

function verifyRS256(jwt, key) {
  const parts = jwt.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
    if (header.alg !== 'RS256') return undefined;
    const ok = crypto.verify(
      'sha256',
      Buffer.from(`${parts[0]}.${parts[1]}`),
      key,
      Buffer.from(parts[2], 'base64url'),
    );
    return ok ? JSON.parse(Buffer.from(parts[1], 'base64url').toString()) : undefined;
  } catch {
    return undefined;
  }
}

// WSO2 allows one callback "URL" of the form regexp=(https://a|https://b).
function splitRedirectUris(uris) {
  const literal = [];
  const patterns = [];
  for (const uri of uris) {
    if (uri.startsWith('regexp=')) {
      patterns.push(new RegExp(`^(?:${uri.slice('regexp='.length)})$`));
    } else {
      literal.push(uri);
    }
  }
  return { literal, patterns };
}

// The login prompt also comes back when acr_values asks for a class the
// provider session does not have (a step-up), once: the login that follows
// answers the request, whatever acr it reached.
function stepUpPolicy() {
  const { Check, base } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.add(new Check(
    'acr_step_up',
    'a stronger authentication is requested',
    (ctx) => {
      const { oidc } = ctx;
      if (oidc.result?.login) return Check.NO_NEED_TO_PROMPT;
      const wanted = (oidc.params.acr_values ?? '').split(' ').filter(Boolean);
      if (wanted.length && oidc.session.accountId && !wanted.includes(oidc.session.acr)) {
        return Check.REQUEST_PROMPT;
      }
      return Check.NO_NEED_TO_PROMPT;
    },
  ));
  return policy;
}

// The profile's limits on the configured lifetimes (config.mjs).
function profileTtl(profile, ttl) {
  if (profile === 'generic') return { ...ttl, AccessToken: Math.min(ttl.AccessToken, 60) };
  if (profile === 'strict') return { ...ttl, AuthorizationCode: Math.min(ttl.AuthorizationCode, 10) };
  return { ...ttl };
}

export class Tenant {
  // `previous`: the tenant this one replaces (key rotation): its storage
  // (sessions, tokens) and cookie keys carry over, and unless `dropOldKey`, its
  // signing key stays published (after the new one) and trusted.
  constructor({
    name, publicOrigin, settings, fetch, log, previous, dropOldKey = false,
  }) {
    this.name = name;
    this.isSuper = name === SUPER_TENANT;
    this.prefix = this.isSuper ? '' : `/t/${name}`;
    this.base = `${publicOrigin}${this.prefix}`;
    this.issuer = `${this.base}/oauth2/token`;
    // An organization (config.mjs "organizations") has its own id and name.
    this.orgId = settings.orgId
      ?? (this.isSuper ? SUPER_ORG_ID : stableUuid(`idgateway-test-provider:org:${name}`));
    this.orgName = settings.orgName ?? (this.isSuper ? 'Super' : name);
    this.orgHandle = settings.orgHandle ?? name;
    this.users = settings.users;
    this.clients = new Map(settings.clients.map((c) => [c.client_id, c]));
    this.consentPage = settings.consentPage;
    // Deliberate faults for the gateway's security tests (config.mjs); {} = none.
    this.misbehave = settings.misbehave ?? {};
    // "wso2", "generic" or "strict" (config.mjs): which provider this one plays.
    this.profile = settings.profile ?? 'wso2';
    this.ttl = profileTtl(this.profile, settings.ttl);
    this.log = log;
    this.store = previous?.store ?? new TenantStore();
    this.cookieKeys = previous?.cookieKeys ?? [crypto.randomBytes(32).toString('hex')];
    this.key = makeSigningKey();
    this.oldKeys = previous && !dropOldKey ? [previous.key, ...previous.oldKeys].slice(0, 2) : [];
    this.callbackPatterns = new Map();
    this.provider = this.#buildProvider(settings, fetch);
    logoutConsentWanted.set(this.provider, settings.logoutConsent);
    tenantsByProvider.set(this.provider, this);
    this.#patchModels();
    this.#addMiddleware();
    this.#addListeners();
  }

  userBySub(sub) {
    return this.users.find((u) => u.sub === sub);
  }

  // WSO2 accepts "carol" and "carol@acme.com" in a tenant.
  userByName(username) {
    const suffix = `@${this.name}`;
    const plain = username.endsWith(suffix) ? username.slice(0, -suffix.length) : username;
    return this.users.find((u) => u.username === plain);
  }

  orgClaims() {
    return { org_id: this.orgId, org_name: this.orgName, org_handle: this.orgHandle };
  }

  #clientMetadata(client) {
    const { literal, patterns } = splitRedirectUris(client.redirect_uris);
    const postLogout = splitRedirectUris(client.post_logout_redirect_uris ?? client.redirect_uris);
    if (patterns.length || postLogout.patterns.length) {
      this.callbackPatterns.set(client.client_id, {
        redirect: patterns,
        postLogout: postLogout.patterns.length ? postLogout.patterns : patterns,
      });
    }
    const metadata = {
      client_id: client.client_id,
      client_name: client.client_name,
      redirect_uris: literal.length ? literal : [`${this.base}/regexp-callback-placeholder`],
      post_logout_redirect_uris: postLogout.literal,
      grant_types: client.grant_types ?? ['authorization_code', 'refresh_token'],
      response_types: client.response_types ?? ['code'],
      token_endpoint_auth_method: client.token_endpoint_auth_method,
      id_token_signed_response_alg: client.id_token_signed_response_alg ?? 'RS256',
    };
    if (client.token_endpoint_auth_method !== 'none') {
      metadata.client_secret = client.client_secret;
    }
    if (client.token_endpoint_auth_method === 'private_key_jwt') {
      metadata.jwks = client.jwks;
    }
    if (client.backchannel_logout_uri) {
      metadata.backchannel_logout_uri = client.backchannel_logout_uri;
      metadata.backchannel_logout_session_required = true;
    }
    return Object.fromEntries(Object.entries(metadata).filter(([, v]) => v !== undefined));
  }

  #buildProvider(settings, fetch) {
    const tenant = this;
    const claimsFor = (user) => ({
      sub: user.sub,
      username: user.username,
      given_name: user.given_name,
      family_name: user.family_name,
      name: user.name ?? ([user.given_name, user.family_name].filter(Boolean).join(' ') || undefined),
      email: user.email,
      email_verified: user.email === undefined ? undefined : user.email_verified !== false,
      groups: user.groups,
      roles: user.roles,
    });

    const configuration = {
      adapter: this.store.adapterFactory(),
      clients: settings.clients.map((c) => this.#clientMetadata(c)),
      jwks: { keys: [this.key, ...this.oldKeys].flatMap((k) => k.jwks.keys) },
      cookies: {
        names: {
          session: `wso2_session_${this.name.replace(/[^A-Za-z0-9]/g, '_')}`,
          interaction: `wso2_interaction_${this.name.replace(/[^A-Za-z0-9]/g, '_')}`,
          resume: `wso2_resume_${this.name.replace(/[^A-Za-z0-9]/g, '_')}`,
        },
        keys: this.cookieKeys,
        long: { httpOnly: true, sameSite: 'none', secure: true },
        short: { httpOnly: true, sameSite: 'lax', secure: true },
      },
      routes: {
        authorization: '/oauth2/authorize',
        token: '/oauth2/token',
        userinfo: '/oauth2/userinfo',
        jwks: '/oauth2/jwks',
        introspection: '/oauth2/introspect',
        revocation: '/oauth2/revoke',
        end_session: '/oidc/logout',
        pushed_authorization_request: '/oauth2/par',
      },
      // WSO2 API resources' scopes (e.g. orders:read) besides the OIDC ones.
      scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'roles', ...(settings.api_scopes ?? [])],
      claims: {
        openid: ['sub'],
        profile: ['username', 'given_name', 'family_name', 'name'],
        email: ['email', 'email_verified'],
        groups: ['groups', 'roles'],
        roles: ['roles'],
        acr: null,
        sid: null,
        auth_time: null,
        iss: null,
      },
      // generic: the scope's claims only at userinfo when an access token is issued.
      conformIdTokenClaims: this.profile === 'generic',
      // No grace period: a token past its exp is dead (tests use 5 s access tokens).
      clockTolerance: 0,
      clientAuthMethods: {
        wso2: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'],
        generic: ['client_secret_post'],
        strict: ['private_key_jwt'],
      }[this.profile],
      enabledJWA: {
        idTokenSigningAlgValues: ['RS256', 'PS256'],
      },
      enableHttpPostMethods: true,
      // WSO2 IS's per-application "Mandatory PKCE" switch: on unless a client
      // says pkce_required: false (as an app configured for mod_auth_openidc's
      // defaults, which send no code_challenge).
      pkce: { required: (_ctx, client) => this.clients.get(client.clientId)?.pkce_required !== false },
      rotateRefreshToken: true,
      issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
      ttl: { ...this.ttl },
      features: {
        devInteractions: { enabled: false },
        pushedAuthorizationRequests: {
          enabled: true,
          requirePushedAuthorizationRequests: this.profile === 'strict',
        },
        // WSO2's "Token binding: DPoP" (RFC 9449): a DPoP proof at the token
        // endpoint binds the access token to its key (cnf.jkt).
        dPoP: { enabled: true },
        clientCredentials: { enabled: true },
        backchannelLogout: { enabled: true },
        claimsParameter: { enabled: true },
        introspection: { enabled: true, allowedPolicy: async () => true },
        revocation: {
          enabled: true,
          allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
        },
        resourceIndicators: { enabled: false },
        rpInitiatedLogout: {
          enabled: true,
          logoutSource: async (ctx, form) => {
            ctx.body = logoutConsentPage(ctx.host, form);
          },
          postLogoutSuccessSource: async (ctx) => {
            const { html } = messagePage('Signed out', 'You have successfully signed out.');
            ctx.body = html;
          },
        },
        userinfo: { enabled: true },
      },
      // Step-up: "pwd" for a password, "mfa" when acr_values asked for it and
      // the user can (users with "mfa": false cannot: the provider answers a
      // lower acr, as WSO2 does when an authentication step is skipped).
      acrValues: ['pwd', 'mfa'],
      interactions: {
        policy: stepUpPolicy(),
        url: async (_ctx, interaction) => {
          const params = new URLSearchParams();
          const page = interaction.prompt.name === 'consent' ? 'oauth2_consent.do' : 'login.do';
          params.set('sessionDataKey', interaction.uid);
          params.set('client_id', interaction.params.client_id ?? '');
          params.set('type', 'oidc');
          params.set('authenticators', 'BasicAuthenticator:LOCAL');
          params.set('tenantDomain', tenant.name);
          return `/authenticationendpoint/${page}?${params}`;
        },
      },
      loadExistingGrant: async (ctx) => {
        const { oidc } = ctx;
        const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
        let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
        if (tenant.consentPage) {
          return grant;
        }
        // Consent off (WSO2's "skip consent"): grant whatever was asked for.
        grant ||= new oidc.provider.Grant({
          accountId: oidc.account.accountId,
          clientId: oidc.client.clientId,
        });
        grant.addOIDCScope([...oidc.requestParamScopes].join(' '));
        const claims = [...oidc.requestParamClaims];
        if (claims.length) grant.addOIDCClaims(claims);
        await grant.save();
        return grant;
      },
      findAccount: async (_ctx, sub) => {
        const user = tenant.userBySub(sub);
        if (!user) return undefined;
        return {
          accountId: sub,
          claims: async () => Object.fromEntries(
            Object.entries(claimsFor(user)).filter(([, v]) => v !== undefined),
          ),
        };
      },
      renderError: async (ctx, out) => {
        ctx.type = 'html';
        const text = Object.entries(out).map(([k, v]) => `${k}: ${v}`).join('; ');
        ctx.body = messagePage('Error', text).html;
      },
      fetch,
    };
    const provider = new Provider(this.issuer, configuration);
    provider.proxy = false;
    return provider;
  }

  #patchModels() {
    const tenant = this;
    const { provider } = this;

    // WSO2 puts `sid` into every ID token, backchannel logout or not (a
    // generic provider by default none) ...
    provider.Client.prototype.includeSid = () => tenant.profile !== 'generic';

    // ... and one session has one sid, shared by every application.
    provider.Session.prototype.ensureClientContainer = function ensureClientContainer(clientId) {
      if (!this.sidFor(clientId)) {
        this.sidFor(clientId, stableUuid(`sid:${this.uid}`));
      }
    };

    // regexp=(...) callback URLs.
    const { redirectUriAllowed, postLogoutRedirectUriAllowed } = provider.Client.prototype;
    provider.Client.prototype.redirectUriAllowed = function allowed(value) {
      return redirectUriAllowed.call(this, value)
        || !!tenant.callbackPatterns.get(this.clientId)?.redirect.some((re) => re.test(value));
    };
    provider.Client.prototype.postLogoutRedirectUriAllowed = function allowed(value) {
      return postLogoutRedirectUriAllowed.call(this, value)
        || !!tenant.callbackPatterns.get(this.clientId)?.postLogout.some((re) => re.test(value));
    };

    // ID token and logout token claims the WSO2 way.
    const { issue } = provider.IdToken.prototype;
    provider.IdToken.prototype.issue = async function wso2Issue(options = {}) {
      const now = epochTime();
      if (options.use === 'idtoken') {
        this.set('iat', now);
        this.set('nbf', now);
        this.set('jti', crypto.randomUUID());
        this.set('azp', this.client.clientId);
        this.set('amr', this.available.amr ?? ['BasicAuthenticator']);
        // The class the login reached ("pwd", or "mfa" for a step-up).
        if (this.available.acr) this.set('acr', this.available.acr);
        if (this.extra.sid) this.set('isk', sha256hex(`isk:${this.extra.sid}`));
        if (tenant.profile !== 'generic') {
          for (const [k, v] of Object.entries(tenant.orgClaims())) this.set(k, v);
        }
        const accessToken = this.ctx?.oidc?.entities?.AccessToken;
        if (accessToken?.issuedValue) this.set('at_hash', accessToken.issuedValue);
      } else if (options.use === 'logout') {
        this.set('iat', now);
        this.set('jti', crypto.randomUUID());
      }
      return issue.call(this, options);
    };

    // Access tokens: remember the value handed out (for at_hash) and, for clients
    // with access_token_format "jwt", hand out a signed at+jwt whose jti is the
    // stored opaque token's id.
    // Client-credentials tokens (no user) are access tokens too, JWT or opaque alike.
    for (const Model of [provider.AccessToken, provider.ClientCredentials]) {
      const { save } = Model.prototype;
      Model.prototype.save = async function wso2Save() {
        let value = await save.call(this);
        if (tenant.clients.get(this.clientId)?.access_token_format === 'jwt') {
          const stored = await this.adapter.find(this.jti);
          value = tenant.jwtAccessToken(stored);
        }
        Object.defineProperty(this, 'issuedValue', { value, configurable: true });
        return value;
      };
      const findToken = Model.find;
      Model.find = async function find(value, ...rest) {
        return findToken.call(this, tenant.accessTokenId(value), ...rest);
      };
    }

    // Rotated refresh tokens: the old one is simply dead (invalid_grant) and the
    // new one stays valid (oidc-provider would revoke the whole grant on reuse).
    const { RefreshToken } = provider;
    const findRefreshToken = RefreshToken.find;
    RefreshToken.find = async function find(...args) {
      const token = await findRefreshToken.call(this, ...args);
      return token?.consumed ? undefined : token;
    };
    RefreshToken.prototype.consume = async function consume() {
      if (!(await this.adapter.consume(this.jti))) {
        throw new errors.InvalidGrant('refresh token already used');
      }
      this.emit('consumed');
    };
  }

  jwtAccessToken(stored) {
    const user = stored.accountId ? this.userBySub(stored.accountId) : undefined;
    // WSO2: aud is the client id, plus the application's configured audiences.
    const audiences = this.clients.get(stored.clientId)?.access_token_audiences ?? [];
    const payload = {
      sub: stored.accountId ?? stored.clientId,
      aut: user ? 'APPLICATION_USER' : 'APPLICATION',
      aud: audiences.length ? [stored.clientId, ...audiences] : stored.clientId,
      nbf: stored.iat,
      azp: stored.clientId,
      scope: stored.scope,
      iss: this.issuer,
      exp: stored.exp,
      iat: stored.iat,
      jti: stored.jti,
      client_id: stored.clientId,
      // DPoP-bound (RFC 9449 6.1): the thumbprint of the proof's key.
      cnf: stored.jkt ? { jkt: stored.jkt } : undefined,
      ...this.orgClaims(),
    };
    return this.sign(payload, { typ: 'at+jwt' });
  }

  // Any claims signed with this tenant's key (the security tests' crafted
  // tokens: expired, another audience, an unknown kid...). RS256 unless the
  // header says PS256.
  sign(payload, header = {}) {
    const full = { alg: 'RS256', kid: this.key.kidRS256, ...header };
    const clean = Object.fromEntries(Object.entries(payload).filter(([, v]) => v !== undefined));
    if (full.alg === 'PS256') {
      const input = `${b64url(full)}.${b64url(clean)}`;
      const signature = crypto.sign('sha256', Buffer.from(input), {
        key: this.key.privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32,
      }).toString('base64url');
      return `${input}.${signature}`;
    }
    return signRS256(clean, full, this.key.privateKey);
  }

  // A back-channel logout token for `clientId`, signed like WSO2's (for tests
  // that send their own: sub-only, sid-only, a made-up kid).
  logoutToken(clientId, { sub, sid, kid } = {}) {
    const now = epochTime();
    const payload = {
      iss: this.issuer,
      aud: clientId,
      iat: now,
      exp: now + 120,
      jti: crypto.randomUUID(),
      events: { 'http://schemas.openid.net/event/backchannel-logout': {} },
    };
    if (sub) payload.sub = sub;
    if (sid) payload.sid = sid;
    return signRS256(payload, { alg: 'RS256', typ: 'logout+jwt', kid: kid ?? this.key.kidRS256 }, this.key.privateKey);
  }

  // A JWT access token of ours stands for the stored token named by its jti.
  accessTokenId(value) {
    if (typeof value !== 'string' || value.split('.').length !== 3) return value;
    const payload = [this.key, ...this.oldKeys]
      .map((k) => verifyRS256(value, k.publicKey))
      .find(Boolean);
    return payload?.iss === this.issuer && typeof payload.jti === 'string' ? payload.jti : value;
  }

  #addMiddleware() {
    const tenant = this;
    this.provider.use(async (ctx, next) => {
      await next();
      const route = ctx._matchedRouteName;
      if (route === 'discovery' && ctx.status === 200 && ctx.body) {
        ctx.body = tenant.discovery(ctx.body);
      } else if (route === 'introspection' && tenant.introspectionFault) {
        await tenant.misbehaveOnIntrospection(ctx);
      } else if (route === 'introspection' && ctx.status === 200 && ctx.body?.active) {
        ctx.body = tenant.introspection(ctx);
      } else if (route === 'token' && ctx.status === 200 && ctx.body
        && Object.keys(tenant.misbehave).length) {
        tenant.misbehaveOnToken(ctx);
      }
    });
  }

  // The security tests' faulty token answers (only with "misbehave" set).
  misbehaveOnToken(ctx) {
    const body = { ...ctx.body };
    const fault = this.misbehave.refresh_id_token;
    if (fault && ctx.oidc?.params?.grant_type === 'refresh_token' && body.id_token) {
      if (fault === 'garbage') {
        body.id_token = 'not.a.jwt';
      } else {
        // Validly signed by this tenant, right issuer and audience: only sub differs.
        const [header, payload] = body.id_token.split('.').slice(0, 2)
          .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString()));
        body.id_token = signRS256({ ...payload, sub: 'mallory' }, header, this.key.privateKey);
      }
      this.log(`misbehaving: refresh answered with a ${fault} ID token`);
    }
    if (this.misbehave.expires_in === undefined) {
      ctx.body = body;
      return;
    }
    // Raw JSON text: 1e400 cannot be written by JSON.stringify.
    const marker = '"__expires_in__"';
    body.expires_in = '__expires_in__';
    ctx.type = 'application/json; charset=utf-8';
    ctx.body = JSON.stringify(body).replace(marker, this.misbehave.expires_in);
    this.log(`misbehaving: expires_in ${this.misbehave.expires_in}`);
  }

  // /_test/introspection?mode=: what introspection answers instead (the
  // gateway's security tests). "slow" answers after 3 s.
  async misbehaveOnIntrospection(ctx) {
    const mode = this.introspectionFault;
    if (mode === 'inactive') {
      ctx.status = 200;
      ctx.body = { active: false };
    } else if (mode === '500') {
      ctx.status = 500;
      ctx.body = { error: 'server_error' };
    } else if (mode === 'garbage') {
      ctx.status = 200;
      ctx.type = 'application/json';
      ctx.body = '{"active": tru';
    } else if (mode === 'slow') {
      await new Promise((resolve) => { setTimeout(resolve, 3000); });
      ctx.status = 200;
      ctx.body = { active: false };
    }
    this.log(`misbehaving: introspection answered ${mode}`);
  }

  discovery(body) {
    const jwksBase = this.misbehave.jwks_uri === 'http' ? this.base.replace(/^https:/, 'http:') : this.base;
    const out = {
      ...body,
      issuer: this.issuer,
      authorization_endpoint: `${this.base}/oauth2/authorize`,
      token_endpoint: `${this.base}/oauth2/token`,
      userinfo_endpoint: `${this.base}/oauth2/userinfo`,
      jwks_uri: `${jwksBase}/oauth2/jwks`,
      introspection_endpoint: `${this.base}/oauth2/introspect`,
      revocation_endpoint: `${this.base}/oauth2/revoke`,
      end_session_endpoint: `${this.base}/oidc/logout`,
      check_session_iframe: `${this.base}/oidc/checksession`,
      backchannel_logout_supported: true,
      backchannel_logout_session_supported: true,
      frontchannel_logout_supported: false,
      code_challenge_methods_supported: ['S256', 'plain'],
      id_token_signing_alg_values_supported: ['RS256', 'PS256'],
      claims_supported: [
        'sub', 'username', 'given_name', 'family_name', 'name', 'email', 'email_verified',
        'groups', 'roles', 'iss', 'aud', 'azp', 'iat', 'nbf', 'exp', 'jti', 'sid', 'isk',
        'amr', 'acr', 'auth_time', 'nonce', 'at_hash', 'org_id', 'org_name', 'org_handle',
      ],
    };
    if (this.profile === 'generic') {
      Object.assign(out, {
        backchannel_logout_supported: false,
        backchannel_logout_session_supported: false,
        frontchannel_logout_supported: true,
        frontchannel_logout_session_supported: false,
        token_endpoint_auth_methods_supported: ['client_secret_post'],
      });
    } else if (this.profile === 'strict') {
      Object.assign(out, {
        token_endpoint_auth_methods_supported: ['private_key_jwt'],
        token_endpoint_auth_signing_alg_values_supported: ['RS256', 'PS256', 'ES256'],
        code_challenge_methods_supported: ['S256'],
        require_pushed_authorization_requests: true,
      });
    }
    return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== null && v !== undefined));
  }

  introspection(ctx) {
    const { entities } = ctx.oidc;
    const token = entities.AccessToken ?? entities.RefreshToken ?? entities.ClientCredentials;
    const body = ctx.body;
    if (!token) return body;
    const user = token.accountId ? this.userBySub(token.accountId) : undefined;
    const out = {
      active: true,
      client_id: token.clientId,
      username: user ? `${user.username}@${this.name}` : undefined,
      scope: token.scope || undefined,
      exp: token.exp,
      iat: token.iat,
      nbf: token.iat,
      token_type: token.kind === 'RefreshToken' ? 'Refresh' : (token.jkt ? 'DPoP' : 'Bearer'),
      aut: user ? 'APPLICATION_USER' : 'APPLICATION',
      cnf: token.jkt ? { jkt: token.jkt } : undefined,
    };
    return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined));
  }

  #addListeners() {
    const tenant = this;
    this.provider.on('authorization.success', (ctx, out) => {
      if (!out || !ctx.oidc?.client) return;
      // OpenID Connect Session Management's session_state, WSO2's AuthenticatedIdPs.
      const clientId = ctx.oidc.client.clientId;
      const redirectUri = ctx.oidc.params.redirect_uri ?? ctx.oidc.client.redirectUris[0];
      let origin = '';
      try {
        origin = new URL(redirectUri).origin;
      } catch {
        // keep ''
      }
      const browserState = ctx.cookies.get('opbs') ?? ctx.oidc.session?.uid ?? '';
      const salt = crypto.randomBytes(8).toString('hex');
      out.session_state = `${sha256hex(`${clientId} ${origin} ${browserState} ${salt}`)}.${salt}`;
      const user = ctx.oidc.session?.accountId ? tenant.userBySub(ctx.oidc.session.accountId) : undefined;
      out.AuthenticatedIdPs = `${b64url({ alg: 'none' })}.${b64url({
        sub: user ? user.username : undefined,
        aud: clientId,
        idps: [{ idp: 'LOCAL', authenticator: 'BasicAuthenticator' }],
      })}.`;
    });
    this.provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
      tenant.log(`back-channel logout sent to ${client.backchannelLogoutUri} (client ${client.clientId}, sub ${accountId}, sid ${sid})`);
    });
    this.provider.on('backchannel.error', (_ctx, err, client, accountId, sid) => {
      tenant.log(`back-channel logout to ${client.backchannelLogoutUri} FAILED (client ${client.clientId}, sub ${accountId}, sid ${sid}): ${err.message}`);
    });
    for (const event of ['server_error', 'grant.error', 'authorization.error', 'end_session.error', 'introspection.error', 'userinfo.error', 'revocation.error']) {
      this.provider.on(event, (_ctx, err) => {
        tenant.log(`${event}: ${err.error ?? err.name}: ${err.error_description ?? err.message}${err.cause ? ` (${err.cause.message ?? err.cause})` : ''}`);
      });
    }
  }

  // ---- provider sessions (the /_test/ admin API) ----

  sessions() {
    return this.store.all('Session')
      .filter((s) => s.accountId)
      .map((s) => {
        const user = this.userBySub(s.accountId);
        const sids = Object.fromEntries(
          Object.entries(s.authorizations ?? {}).map(([clientId, a]) => [clientId, a.sid]),
        );
        return {
          id: s.jti,
          uid: s.uid,
          sub: s.accountId,
          username: user?.username ?? null,
          sid: Object.values(sids)[0] ?? null,
          sids,
          clients: Object.keys(sids),
        };
      });
  }

  // End every provider session of `username`: back-channel logouts to each
  // application that has one, tokens and grants revoked, session gone.
  async logoutUser(username) {
    const user = this.userByName(username);
    if (!user) {
      throw new Error(`no user ${username} in tenant ${this.name}`);
    }
    const { provider } = this;
    const results = [];
    let ended = 0;
    for (const stored of this.store.all('Session').filter((s) => s.accountId === user.sub)) {
      const session = await provider.Session.find(stored.jti);
      if (!session) continue;
      for (const [clientId, authorization] of Object.entries(session.authorizations ?? {})) {
        const client = await provider.Client.find(clientId).catch(() => undefined);
        if (client?.backchannelLogoutUri) {
          try {
            await client.backchannelLogout(session.accountId, authorization.sid);
            this.log(`back-channel logout sent to ${client.backchannelLogoutUri} (client ${clientId}, sid ${authorization.sid})`);
            results.push({ client_id: clientId, sid: authorization.sid, ok: true });
          } catch (err) {
            this.log(`back-channel logout to ${client.backchannelLogoutUri} FAILED: ${err.message}`);
            results.push({
              client_id: clientId, sid: authorization.sid, ok: false, error: err.message,
            });
          }
        }
        if (authorization.grantId && !authorization.persistsLogout) {
          await Promise.all([
            provider.AccessToken.revokeByGrantId(authorization.grantId),
            provider.RefreshToken.revokeByGrantId(authorization.grantId),
            provider.AuthorizationCode.revokeByGrantId(authorization.grantId),
            provider.Grant.adapter.destroy(authorization.grantId),
          ]);
        }
      }
      await session.destroy();
      ended += 1;
    }
    return { tenant: this.name, username: user.username, sessions_ended: ended, backchannel: results };
  }
}

