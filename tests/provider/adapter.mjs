// In-memory storage for one tenant's oidc-provider instance.
//
// Like oidc-provider's MemoryAdapter, but one store per tenant (the stock one is a
// process-wide LRU capped at 1000 entries), sessions can be listed (for the
// /_test/ admin API), and consume() is atomic: it returns false when the entry
// was already consumed, so of two concurrent refreshes with one token, one loses.

const GRACE_MS = 60_000;

export class TenantStore {
  constructor() {
    this.items = new Map(); // "Model:id" -> { payload, expiresAt }
    this.sessionUids = new Map(); // uid -> Session id
    this.grants = new Map(); // grantId -> Set("Model:id")
  }

  get(key) {
    const entry = this.items.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= Date.now()) {
      this.items.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  // All live payloads of a model, e.g. every Session.
  all(model) {
    const prefix = `${model}:`;
    const out = [];
    for (const key of [...this.items.keys()]) {
      if (key.startsWith(prefix)) {
        const payload = this.get(key);
        if (payload) out.push(payload);
      }
    }
    return out;
  }

  adapterFactory() {
    return (model) => new TenantAdapter(model, this);
  }
}

class TenantAdapter {
  constructor(model, store) {
    this.model = model;
    this.store = store;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 + GRACE_MS : null;
    this.store.items.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) {
      this.store.sessionUids.set(payload.uid, id);
    }
    if (payload.grantId) {
      let members = this.store.grants.get(payload.grantId);
      if (!members) {
        members = new Set();
        this.store.grants.set(payload.grantId, members);
      }
      members.add(key);
    }
  }

  async find(id) {
    return this.store.get(this.key(id));
  }

  async findByUid(uid) {
    const id = this.store.sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const payload = this.store.get(this.key(id));
    if (!payload || payload.consumed) {
      return false;
    }
    payload.consumed = Math.floor(Date.now() / 1000);
    return true;
  }

  async destroy(id) {
    const key = this.key(id);
    const payload = this.store.get(key);
    this.store.items.delete(key);
    if (payload?.uid && this.store.sessionUids.get(payload.uid) === id) {
      this.store.sessionUids.delete(payload.uid);
    }
  }

  async revokeByGrantId(grantId) {
    const members = this.store.grants.get(grantId);
    if (!members) return;
    const prefix = `${this.model}:`;
    for (const key of [...members]) {
      if (key.startsWith(prefix)) {
        this.store.items.delete(key);
        members.delete(key);
      }
    }
    if (members.size === 0) {
      this.store.grants.delete(grantId);
    }
  }
}
