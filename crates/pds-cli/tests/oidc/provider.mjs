// A real OpenID Provider (panva/oidc-provider, a certified implementation)
// configured like Pro Santé Connect, for PDS's identity tests:
//
// - scopes `openid scope_all`, acr values `eidas1`, the PSC claims
//   (SubjectNameID, SubjectRefPro with exercices and activities);
// - discovery at the standard path and at PSC's non-standard
//   `/.well-known/wallet-openid-configuration`;
// - a confidential client `pds` (PDS's own login, PKCE) and a public client
//   `pds-cli` (PKCE) whose access tokens are JWTs for the `urn:pds:api`
//   audience, which PDS accepts on every front-end;
// - a browser-less login: the interaction page signs in the person chosen
//   with POST /test/next-login, as a card or e-CPS would.
//
// Test-only routes (127.0.0.1, this fixture only): /test/next-login,
// /test/mint (sign arbitrary claims with the provider's key or a forged one)
// and /test/rotate (publish a new signing key, for JWKS rotation).
//
// Usage: node provider.mjs <port> <pds-redirect-uri>; prints {"issuer": ...}.

import * as http from 'node:http';
import * as crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.argv[2] || 0);
const pdsRedirect = process.argv[3];
const cliRedirect = 'http://127.0.0.1/cli-callback';

const people = {
  '810001234567': {
    given_name: 'Jeanne', family_name: 'Martin',
    SubjectRefPro: { codeCivilite: 'MME', exercices: [{ codeProfession: '10', codeCategorieProfessionnelle: 'C', codeSavoirFaire: 'SM54', activities: [{ codeModeExercice: 'S', codeSecteurDactivite: 'SA07', numeroFinessSite: '750712184', raisonSocialeSite: 'CHU', codeRole: 'FON-01' }] }] },
  },
  '810009999999': {
    given_name: 'Paul', family_name: 'Durand',
    SubjectRefPro: { codeCivilite: 'M', exercices: [{ codeProfession: '70', activities: [] }] },
  },
};

let next = { accountId: '810001234567', acr: 'eidas1' };
const lastAcr = new Map();

async function newKey(alg) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  jwk.kid = crypto.randomUUID();
  jwk.alg = alg;
  jwk.use = 'sig';
  return jwk;
}

const signing = await newKey('RS256');
let published = [signing];
const publicOf = (k) => {
  const { d, p, q, dp, dq, qi, ...pub } = k;
  return pub;
};

const listenPort = await new Promise((resolve) => {
  const probe = http.createServer();
  probe.listen(port, '127.0.0.1', () => {
    const p = probe.address().port;
    probe.close(() => resolve(p));
  });
});
const issuer = `http://127.0.0.1:${listenPort}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'pds',
      client_secret: 'pds-test-secret-not-for-production',
      redirect_uris: [pdsRedirect],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'pds-cli',
      redirect_uris: [cliRedirect],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
  ],
  jwks: { keys: [signing] },
  scopes: ['openid', 'scope_all'],
  claims: {
    openid: ['sub'],
    scope_all: ['SubjectNameID', 'SubjectRefPro', 'given_name', 'family_name', 'preferred_username'],
  },
  acrValues: ['eidas1', 'eidas2'],
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  cookies: { keys: ['pds-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client) => (client.clientId === 'pds-cli' ? 'urn:pds:api' : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'urn:pds:api',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  // Access tokens carry the identity and professional claims, so that a
  // resource server can map roles without calling userinfo.
  extraTokenClaims: async (ctx, token) => ({
    acr: lastAcr.get(token.accountId),
    sid: token.sid,
    SubjectNameID: token.accountId,
    SubjectRefPro: people[token.accountId]?.SubjectRefPro,
  }),
  async findAccount(ctx, id) {
    const p = people[id];
    if (!p) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: `f:${id}`, SubjectNameID: id, preferred_username: id, ...p };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});
provider.proxy = false;

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
}

function send(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(obj));
}

async function mint(spec) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: issuer, aud: 'urn:pds:api', sub: 'f:810001234567', SubjectNameID: '810001234567',
    acr: 'eidas1', iat: now, exp: now + 300, jti: crypto.randomUUID(), sid: crypto.randomUUID(),
    SubjectRefPro: people['810001234567'].SubjectRefPro,
    ...(spec.claims || {}),
  };
  for (const k of spec.remove || []) delete claims[k];
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  switch (spec.key || 'idp') {
    case 'none':
      return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
    case 'hs256-public': {
      // HMAC keyed with the provider's public key (the classic confusion).
      const pub = crypto.createPublicKey({ key: publicOf(published[0]), format: 'jwk' });
      const pem = pub.export({ type: 'spki', format: 'pem' });
      const h = b64({ alg: 'HS256', typ: 'JWT', kid: published[0].kid });
      const sig = crypto.createHmac('sha256', pem).update(`${h}.${b64(claims)}`).digest('base64url');
      return `${h}.${b64(claims)}.${sig}`;
    }
    case 'other': {
      const k = await newKey('RS256');
      return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: k.kid }).sign(await jose.importJWK(k, 'RS256'));
    }
    case 'rotated': {
      const k = published[0];
      return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: k.kid }).sign(await jose.importJWK(k, 'RS256'));
    }
    default:
      return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: signing.kid }).sign(await jose.importJWK(signing, 'RS256'));
  }
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/test/next-login' && req.method === 'POST') {
      next = { ...next, ...(await body(req)) };
      return send(res, 200, next);
    }
    if (url.pathname === '/test/mint' && req.method === 'POST') {
      return send(res, 200, { token: await mint(await body(req)) });
    }
    if (url.pathname === '/test/rotate' && req.method === 'POST') {
      // A new key first in the published set; the old one stays published.
      published = [await newKey('RS256'), ...published];
      return send(res, 200, { kid: published[0].kid });
    }
    if (url.pathname === '/jwks') {
      return send(res, 200, { keys: published.map(publicOf) });
    }
    if (url.pathname === '/.well-known/wallet-openid-configuration') {
      req.url = '/.well-known/openid-configuration';
    }
    if (url.pathname.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      const { prompt, params, session } = details;
      if (prompt.name === 'login') {
        lastAcr.set(next.accountId, next.acr);
        return provider.interactionFinished(req, res, {
          login: { accountId: next.accountId, acr: next.acr, amr: ['pwd', 'otp'] },
        }, { mergeWithLastSubmission: false });
      }
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      if (missing.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
      }
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return callback(req, res);
  } catch (e) {
    send(res, 500, { error: String(e && e.stack || e) });
  }
});

server.listen(listenPort, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
