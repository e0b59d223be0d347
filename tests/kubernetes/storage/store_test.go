package storage

// The storage conformance functions etcd3's own store_test.go and watcher_test.go run, run
// here against $STORAGE_SERVER. Three need etcd3's unexported corruptObjectError to build
// their input and cannot run from outside that package: RunTestGetListWithErrorAggregation,
// RunTestGetListWithoutErrorAggregation, RunTestWatchWithUnsafeDelete. They exercise the
// apiserver's own error aggregation, not the server.

import (
	"fmt"
	"testing"

	"k8s.io/apiserver/pkg/features"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// The most an etcd3 store asks for in one page (its maxLimit).
const maxPage = 10000

func TestCreate(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestCreate(ctx, t, s.store, s.checkStored())
}

func TestCreateWithTTL(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestCreateWithTTL(ctx, t, s.store)
}

func TestCreateWithKeyExist(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestCreateWithKeyExist(ctx, t, s.store)
}

func TestGet(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGet(ctx, t, s.store)
}

func TestUnconditionalDelete(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestUnconditionalDelete(ctx, t, s.store)
}

func TestConditionalDelete(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestConditionalDelete(ctx, t, s.store)
}

func TestDeleteWithSuggestion(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestDeleteWithSuggestion(ctx, t, s.store)
}

func TestDeleteWithSuggestionAndConflict(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, s.store)
}

func TestDeleteWithSuggestionOfDeletedObject(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, s.store)
}

func TestValidateDeletionWithSuggestion(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, s.store)
}

func TestValidateDeletionWithOnlySuggestionValid(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, s.store)
}

func TestDeleteWithConflict(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestDeleteWithConflict(ctx, t, s.store)
}

func unsafeDeletion(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
}

func TestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(t *testing.T) {
	unsafeDeletion(t)
	codec := &failingCodec{Codec: testCodec()}
	ctx, s := testSetup(t, withCodec(codec))
	storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(ctx, t, s.store, codec.setFailing)
}

func TestDeleteWithConflictAndExpectedTransformError(t *testing.T) {
	unsafeDeletion(t)
	tr := &failingTransformer{Transformer: prefixTransformer()}
	ctx, s := testSetup(t, withTransformer(tr))
	storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s.store, tr.setFailing)
}

func TestDeleteWithConflictAndExpectedDecodeError(t *testing.T) {
	unsafeDeletion(t)
	codec := &failingCodec{Codec: testCodec()}
	ctx, s := testSetup(t, withCodec(codec))
	storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s.store, codec.setFailing)
}

func TestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeFailure(t *testing.T) {
	unsafeDeletion(t)
	ctx, s := testSetup(t)
	storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(ctx, t, s.store)
}

func TestPreconditionalDeleteWithSuggestion(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, s.store)
}

func TestPreconditionalDeleteWithSuggestionPass(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, s.store)
}

func TestListPaging(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestListPaging(ctx, t, s.store)
}

func TestGetListNonRecursive(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGetListNonRecursive(ctx, t, s.increaseRV(), s.store)
}

func TestGetListRecursivePrefix(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGetListRecursivePrefix(ctx, t, s.store)
}

func TestKeySchema(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestKeySchema(ctx, t, s.store)
}

func TestGuaranteedUpdate(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGuaranteedUpdate(ctx, t, s.prefixed(), s.checkStored())
}

func TestGuaranteedUpdateWithTTL(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, s.store)
}

func TestGuaranteedUpdateChecksStoredData(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, s.prefixed())
}

func TestGuaranteedUpdateWithConflict(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, s.store)
}

func TestGuaranteedUpdateWithSuggestionAndConflict(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, s.store)
}

func TestTransformationFailure(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestTransformationFailure(ctx, t, s.prefixed())
}

// Lists with and without etcd 3.7's RangeStream (the apiserver asks for it when the gate is
// on): with it on, the lists must really be streamed.
func TestList(t *testing.T) {
	for _, rangeStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("rangeStream=%v", rangeStream), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			ctx, s := testSetup(t)
			storagetesting.RunTestList(ctx, t, s.store, s.compaction(), false, s.lists())
			streamed := s.kv().GetStreamReadsAndReset()
			if rangeStream && streamed == 0 {
				t.Error("expected lists to be served by RangeStream")
			}
			if !rangeStream && streamed > 0 {
				t.Errorf("expected no RangeStream requests with the feature disabled, got %d", streamed)
			}
		})
	}
}

func TestConsistentList(t *testing.T) {
	for _, rangeStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("rangeStream=%v", rangeStream), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			ctx, s := testSetup(t)
			storagetesting.RunTestConsistentList(ctx, t, s.store, s.increaseRV(), false, true, false)
		})
	}
}

func TestCompactRevision(t *testing.T) {
	// The store sees compactions made elsewhere only through its watch on the compact key.
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
	ctx, s := testSetup(t)
	storagetesting.RunTestCompactRevision(ctx, t, s.store, s.increaseRV(), s.compaction())
}

// calls checks a paged list's work: each object transformed once, and as few calls as the
// store's doubling page size allows.
func (s *setup) calls() storagetesting.CallsValidation {
	pt := s.transformer.get().(*storagetesting.PrefixTransformer)
	return func(t *testing.T, pageSize, objects uint64) {
		if reads := pt.GetReadsAndReset(); reads != objects {
			t.Errorf("unexpected reads: %d, expected: %d", reads, objects)
		}
		want := uint64(1)
		if pageSize != 0 {
			limit := pageSize
			for sum := uint64(1); sum < objects; {
				limit = min(limit*2, maxPage)
				sum += limit
				want++
			}
		}
		if got := s.kv().GetReadsAndReset() + s.kv().GetStreamReadsAndReset(); got != want {
			t.Fatalf("unexpected reads: %d, want: %d", got, want)
		}
	}
}

func TestListContinuation(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestListContinuation(ctx, t, s.store, s.calls())
}

func TestListPaginationRareObject(t *testing.T) {
	// Reading the compact key for cache snapshots would add a call to the count.
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, false)
	ctx, s := testSetup(t)
	storagetesting.RunTestListPaginationRareObject(ctx, t, s.store, s.calls())
}

func TestListContinuationWithFilter(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestListContinuationWithFilter(ctx, t, s.store, s.calls())
}

func TestNamespaceScopedList(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestNamespaceScopedList(ctx, t, s.store)
}

func TestListInconsistentContinuation(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestListInconsistentContinuation(ctx, t, s.store, s.compaction())
}

func TestListResourceVersionMatch(t *testing.T) {
	ctx, s := testSetup(t)
	storagetesting.RunTestListResourceVersionMatch(ctx, t, s.prefixed())
}

func TestStats(t *testing.T) {
	for _, sized := range []bool{true, false} {
		t.Run(fmt.Sprintf("SizeBasedListCostEstimate=%v", sized), func(t *testing.T) {
			ctx, s := testSetup(t)
			if sized {
				if err := s.store.EnableResourceSizeEstimation(s.keys); err != nil {
					t.Fatal(err)
				}
			}
			storagetesting.RunTestStats(ctx, t, s.store, s.codec, s.transformer, sized)
		})
	}
}

func TestWatch(t *testing.T) {
	plain := map[string]func(*testing.T){
		"Watch":              func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestWatch(ctx, t, s.store) },
		"ClusterScopedWatch": func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestClusterScopedWatch(ctx, t, s.store) },
		"NamespaceScopedWatch": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunTestNamespaceScopedWatch(ctx, t, s.store)
		},
		"DeleteTriggerWatch": func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestDeleteTriggerWatch(ctx, t, s.store) },
		"WatchFromZero": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunTestWatchFromZero(ctx, t, s.store, s.compaction())
		},
		"WatchFromNonZero": func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestWatchFromNonZero(ctx, t, s.store) },
		"DelayedWatchDelivery": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunTestDelayedWatchDelivery(ctx, t, s.store)
		},
		"WatchError":         func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestWatchError(ctx, t, s.prefixed()) },
		"WatchContextCancel": func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestWatchContextCancel(ctx, t, s.store) },
		"WatcherTimeout":     func(t *testing.T) { ctx, s := testSetup(t); storagetesting.RunTestWatcherTimeout(ctx, t, s.store) },
		"WatchDeleteEventObjectHaveLatestRV": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, s.store)
		},
		"WatchInitializationSignal": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunTestWatchInitializationSignal(ctx, t, s.store)
		},
		"SendInitialEventsBackwardCompatibility": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, s.store)
		},
		"WatchErrorEventIsBlockingFurtherEvent": func(t *testing.T) {
			ctx, s := testSetup(t)
			storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, s.prefixed())
		},
		// Progress notifications every second, as the apiserver's test configures its etcd.
		"ProgressNotify": func(t *testing.T) {
			ctx, s := testSetup(t, withServerFlags("--watch-progress-notify-interval=1s"))
			storagetesting.RunOptionalTestProgressNotify(ctx, t, s.store, s.increaseRV())
		},
		"WatchDispatchBookmarkEvents": func(t *testing.T) {
			ctx, s := testSetup(t, withServerFlags("--watch-progress-notify-interval=1s"))
			storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, s.store, false)
		},
	}
	for name, run := range plain {
		t.Run(name, run)
	}
	for _, rangeStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("RangeStream=%v", rangeStream), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			t.Run("WatchSemantics", func(t *testing.T) {
				ctx, s := testSetup(t)
				storagetesting.RunWatchSemantics(ctx, t, s.store)
			})
			t.Run("WatchSemanticsWithConcurrentDecode", func(t *testing.T) {
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConcurrentWatchObjectDecode, true)
				ctx, s := testSetup(t)
				storagetesting.RunWatchSemantics(ctx, t, s.store)
			})
			t.Run("WatchSemanticInitialEventsExtended", func(t *testing.T) {
				ctx, s := testSetup(t)
				storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, s.store)
			})
			t.Run("WatchListMatchSingle", func(t *testing.T) {
				ctx, s := testSetup(t)
				storagetesting.RunWatchListMatchSingle(ctx, t, s.store)
			})
		})
	}
}
